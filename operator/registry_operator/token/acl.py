"""Authorization: which of the requested actions a subject gets, from ordered access rules.

Semantics (documented for users of the Registry resource):
- For each requested repository, the FIRST rule that matches both the subject and the repository
  decides; later rules are not consulted. No matching rule means no access (default deny).
- A rule matches a subject listed in ``users``, a member of one of ``groups``, a Kubernetes
  ServiceAccount listed in ``serviceAccounts`` (``namespace/name``, or ``namespace/*`` for all of a
  namespace's; ``users`` and ``groups`` never match a ServiceAccount, whatever its name), or anyone at all
  when ``anonymous`` is true: anonymous rules apply to authenticated users too, since anybody can
  obtain an anonymous token anyway. Put specific rules before broad anonymous ones.
- ``repositories`` are fnmatch globs matched against the full requested name, where ``*`` also
  matches ``/`` (``team-a/*`` covers ``team-a/x/y``) and a ``host:port/`` prefix is part of the name.
- A rule with ``services`` applies only to tokens for those registries (an index serving several);
  without, to every registry the service issues tokens for.
- ``registry:catalog:*`` is granted when any rule matching the subject has ``catalog: true``.
- The granted actions are the intersection of requested and allowed; ``*`` in a rule allows every
  action, and a requested ``*`` is granted only by such a rule. The token always carries the
  requested name, never a glob (the registry compares names literally).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .config import AccessRule
from .scope import Scope


@dataclass(frozen=True)
class Subject:
    """Who asks: ``name`` is empty for anonymous requests. A ServiceAccount has ``account`` set to
    (namespace, name) and is named ``system:serviceaccount:<namespace>:<name>``, as Kubernetes names it."""

    name: str = ""
    account: tuple[str, str] | None = None

    @classmethod
    def service_account(cls, namespace: str, name: str) -> Subject:
        return cls(f"system:serviceaccount:{namespace}:{name}", (namespace, name))

    @property
    def anonymous(self) -> bool:
        return not self.name


def _applies(rule: AccessRule, subject: Subject, groups: Mapping[str, frozenset[str]], service: str) -> bool:
    if rule.services and service not in rule.services:
        return False
    if rule.anonymous:
        return True
    if subject.anonymous:
        return False
    if subject.account is not None:
        namespace, name = subject.account
        return f"{namespace}/{name}" in rule.service_accounts or f"{namespace}/*" in rule.service_accounts
    return subject.name in rule.users or any(subject.name in groups.get(g, ()) for g in rule.groups)


def _allowed(rule: AccessRule, requested: Iterable[str]) -> tuple[str, ...]:
    if "*" in rule.actions:
        return tuple(requested)
    return tuple(a for a in requested if a in rule.actions)


def _grant(scope: Scope, rules: list[AccessRule]) -> tuple[str, ...]:
    if scope.type == "registry":
        allowed = scope.name == "catalog" and any(rule.catalog for rule in rules)
        return scope.actions if allowed else ()
    if scope.type != "repository":
        return ()
    for rule in rules:
        if any(fnmatchcase(scope.name, pattern) for pattern in rule.repositories):
            return _allowed(rule, scope.actions)
    return ()


def authorize(
    rules: Iterable[AccessRule],
    groups: Mapping[str, frozenset[str]],
    subject: Subject,
    requested: Iterable[Scope],
    service: str = "",
) -> list[Scope]:
    """Grant each requested scope what the rules allow for a token naming `service` as its audience;
    resources with nothing granted are dropped."""
    applicable = [rule for rule in rules if _applies(rule, subject, groups, service)]
    granted = []
    for scope in requested:
        actions = _grant(scope, applicable)
        if actions:
            granted.append(Scope(scope.type, scope.name, actions, scope.resource_class))
    return granted
