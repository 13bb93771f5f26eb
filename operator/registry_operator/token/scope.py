"""Parsing of Docker token-auth scopes (``type[(class)]:name:actions``).

Names may carry a registry host with a port (``repository:localhost:5000/foo:pull``), so the
type is taken up to the first colon and the actions after the last one: neither can contain ``:``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TYPE = re.compile(r"^([a-z0-9]+)(?:\(([a-z0-9]+)\))?$")


class ScopeError(ValueError):
    """A scope string that does not follow the grammar."""


@dataclass(frozen=True)
class Scope:
    """One requested (or granted) resource with its actions, in request order."""

    type: str
    name: str
    actions: tuple[str, ...]
    resource_class: str = ""

    def to_claim(self) -> dict[str, object]:
        """The JWT ``access`` entry; distribution matches ``type``/``name`` exactly."""
        claim: dict[str, object] = {"type": self.type, "name": self.name, "actions": list(self.actions)}
        if self.resource_class:
            claim["class"] = self.resource_class
        return claim


def parse_scope(text: str) -> Scope:
    """Parse one scope, splitting the name off from both ends because it may contain ``host:port``."""
    type_part, sep, rest = text.partition(":")
    name, sep2, actions_part = rest.rpartition(":")
    match = _TYPE.match(type_part)
    if not sep or not sep2 or not name or match is None:
        raise ScopeError(f"malformed scope {text!r}")
    actions = tuple(dict.fromkeys(a for a in actions_part.split(",") if a))
    return Scope(type=match.group(1), name=name, actions=actions, resource_class=match.group(2) or "")


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Parse repeated ``scope`` parameters; OAuth2 clients pack several into one, space-separated.

    Scopes for the same resource are merged so the token carries one entry per resource.
    """
    merged: dict[tuple[str, str, str], list[str]] = {}
    for value in values:
        for text in value.split():
            scope = parse_scope(text)
            actions = merged.setdefault((scope.type, scope.resource_class, scope.name), [])
            actions.extend(a for a in scope.actions if a not in actions)
    return [Scope(type=t, name=n, actions=tuple(acts), resource_class=c) for (t, c, n), acts in merged.items()]
