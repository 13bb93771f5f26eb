"""Scope parsing, including names that carry a registry host with a port."""

import pytest

from registry_operator.token.scope import Scope, ScopeError, parse_scope, parse_scopes


def test_plain_repository_scope() -> None:
    assert parse_scope("repository:team-a/app:pull,push") == Scope("repository", "team-a/app", ("pull", "push"))


def test_name_with_host_and_port_is_parsed_from_the_right() -> None:
    scope = parse_scope("repository:localhost:5000/foo/bar:pull")
    assert (scope.type, scope.name, scope.actions) == ("repository", "localhost:5000/foo/bar", ("pull",))


def test_catalog_scope_and_star_action() -> None:
    assert parse_scope("registry:catalog:*") == Scope("registry", "catalog", ("*",))


def test_resource_class_is_kept() -> None:
    scope = parse_scope("repository(plugin):vieux/sshfs:pull")
    assert (scope.type, scope.resource_class, scope.name) == ("repository", "plugin", "vieux/sshfs")
    assert scope.to_claim() == {
        "type": "repository",
        "class": "plugin",
        "name": "vieux/sshfs",
        "actions": ["pull"],
    }


def test_duplicate_and_empty_actions_are_dropped() -> None:
    assert parse_scope("repository:a:pull,,pull,push").actions == ("pull", "push")
    assert parse_scope("repository:a:").actions == ()


@pytest.mark.parametrize("text", ["repository", "repository:name", "repository::pull", ":a:pull", "Repo:a:pull"])
def test_malformed_scopes_are_rejected(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_space_separated_and_repeated_scopes_merge_per_resource() -> None:
    scopes = parse_scopes(["repository:a:pull repository:b:pull", "repository:a:push,pull", "registry:catalog:*"])
    assert scopes == [
        Scope("repository", "a", ("pull", "push")),
        Scope("repository", "b", ("pull",)),
        Scope("registry", "catalog", ("*",)),
    ]


def test_no_scope_means_no_access_requested() -> None:
    assert parse_scopes([]) == [] and parse_scopes([""]) == []
