"""Ordered access rules: first match wins, groups, anonymous rules, catalog, globs."""

from typing import Any

from registry_operator.token.acl import Subject, authorize
from registry_operator.token.config import AccessRule, parse_config
from registry_operator.token.scope import Scope, parse_scopes

GROUPS = {"team-a": ["alice", "carol"], "ops": ["dave"]}


def rule(**fields: Any) -> dict[str, Any]:
    """A rule in the user-facing JSON form; ``grants`` validates it through parse_config."""
    return fields


def grants(rules: list[dict[str, Any]], user: str, *scopes: str) -> dict[str, tuple[str, ...]]:
    config = parse_config({"service": "s", "groups": GROUPS, "access": rules})
    granted = authorize(config.access, config.groups, Subject(user), parse_scopes(scopes))
    return {s.name: s.actions for s in granted}


def test_default_deny() -> None:
    assert grants([], "alice", "repository:x:pull") == {}


def test_first_matching_rule_wins_even_if_a_later_one_allows_more() -> None:
    rules = [
        rule(users=["alice"], repositories=["team-a/*"], actions=["pull"]),
        rule(users=["alice"], repositories=["team-a/*"], actions=["*"]),
    ]
    assert grants(rules, "alice", "repository:team-a/app:pull,push,delete") == {"team-a/app": ("pull",)}


def test_rules_for_other_subjects_or_repositories_are_skipped() -> None:
    rules = [
        rule(users=["bob"], repositories=["team-a/*"], actions=["pull"]),
        rule(users=["alice"], repositories=["team-b/*"], actions=["pull"]),
        rule(users=["alice"], repositories=["team-a/*"], actions=["pull", "push"]),
    ]
    assert grants(rules, "alice", "repository:team-a/app:pull,push") == {"team-a/app": ("pull", "push")}


def test_group_membership() -> None:
    rules = [rule(groups=["team-a"], repositories=["team-a/*"], actions=["pull", "push"])]
    assert grants(rules, "carol", "repository:team-a/app:push") == {"team-a/app": ("push",)}
    assert grants(rules, "dave", "repository:team-a/app:push") == {}


def test_anonymous_rules_apply_to_everyone_and_others_not_to_anonymous() -> None:
    rules = [
        rule(users=["alice"], repositories=["private/*"], actions=["pull"]),
        rule(anonymous=True, repositories=["public/*"], actions=["pull"]),
    ]
    assert grants(rules, "", "repository:public/x:pull,push", "repository:private/x:pull") == {"public/x": ("pull",)}
    assert grants(rules, "alice", "repository:public/x:pull", "repository:private/x:pull") == {
        "public/x": ("pull",),
        "private/x": ("pull",),
    }


def test_star_matches_across_slashes_and_host_port_is_part_of_the_name() -> None:
    rules = [
        rule(users=["alice"], repositories=["team-a/*"], actions=["pull"]),
        rule(users=["alice"], repositories=["localhost:5000/*"], actions=["push"]),
    ]
    assert grants(rules, "alice", "repository:team-a/x/y/z:pull") == {"team-a/x/y/z": ("pull",)}
    assert grants(rules, "alice", "repository:localhost:5000/team-a/x:pull,push") == {
        "localhost:5000/team-a/x": ("push",)
    }
    assert grants(rules, "alice", "repository:team-ab/x:pull") == {}


def test_exact_and_question_mark_patterns() -> None:
    rules = [rule(users=["alice"], repositories=["app", "v?"], actions=["pull"])]
    assert grants(rules, "alice", "repository:app:pull", "repository:v1:pull", "repository:v10:pull") == {
        "app": ("pull",),
        "v1": ("pull",),
    }


def test_star_action_allows_anything_requested_and_requested_star_needs_it() -> None:
    rules = [
        rule(users=["alice"], repositories=["all/*"], actions=["*"]),
        rule(users=["alice"], repositories=["some/*"], actions=["pull", "push", "delete"]),
    ]
    assert grants(rules, "alice", "repository:all/x:*", "repository:some/x:*") == {"all/x": ("*",)}
    assert grants(rules, "alice", "repository:some/x:delete,pull") == {"some/x": ("delete", "pull")}


def test_catalog_needs_a_matching_rule_with_catalog() -> None:
    rules = [
        rule(users=["alice"], catalog=True),
        rule(users=["bob"], repositories=["*"], actions=["*"]),
    ]
    assert grants(rules, "alice", "registry:catalog:*") == {"catalog": ("*",)}
    assert grants(rules, "bob", "registry:catalog:*") == {}
    assert grants(rules, "", "registry:catalog:*") == {}


def test_granted_names_are_the_requested_names_never_globs() -> None:
    rules = [AccessRule(users=frozenset({"alice"}), repositories=("team-a/*",), actions=frozenset({"pull"}))]
    granted = authorize(rules, {}, Subject("alice"), parse_scopes(["repository:team-a/app:pull"]))
    assert granted == [Scope("repository", "team-a/app", ("pull",))]


def test_unknown_resource_types_are_not_granted() -> None:
    rules = [rule(users=["alice"], repositories=["*"], actions=["*"])]
    assert grants(rules, "alice", "registry:other:*", "blob:x:pull") == {}
