"""The robot credential of pull Secrets, and its rotation on demand without a moment where a copy is invalid.

htpasswd holds one line per user, so a rotation needs a second user: the robot alternates between `USERS`.
A rotation (a new value of the `ROTATE_ANNOTATION` annotation on the Registry) goes through three states:

1. `next` is created and added to htpasswd (and token rules) next to `current`; the copies keep `current`.
   Registry pods see the new htpasswd only after the kubelet syncs their Secret volume, so the copies switch
   only once `propagation` has passed: before that a pod pulling with the new credential could be refused.
2. `next` becomes `current` (the copies get it); the old one is `retiring` and stays valid.
3. `retiring` goes once every copy carries `current` (the caller knows: `retire`).

Pure: the state is stored as JSON in the private `-http-secret` and decided here from it, the annotation and
the time. Nothing is random except a new password, created only when one is missing or a rotation starts.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from dataclasses import dataclass, replace

from .names import GROUP

USERS = ("robot$pull", "robot$pull2")  # `$` is outside the user names the CRD allows: no user can take them
# The retention Job's user (spec.retention): pull and delete on every repository, and the catalog. Never handed
# out: its password stays in the private `-http-secret`, which only the retention Job reads (that key alone).
RETENTION_USER = "robot$retention"
ROTATE_ANNOTATION = f"{GROUP}/rotate-pull-credential"


@dataclass(frozen=True)
class Credential:
    user: str
    password: str


@dataclass(frozen=True)
class Robot:
    current: Credential  # what the pull Secrets carry
    next: Credential | None = None  # valid in the registry; handed out once `since` + propagation has passed
    since: dt.datetime | None = None
    retiring: Credential | None = None  # still valid until every copy carries `current`
    handled: str | None = None  # the last value of the rotation annotation acted on

    @property
    def valid(self) -> list[Credential]:
        """Every credential the registry must accept now."""
        return [c for c in (self.current, self.next, self.retiring) if c is not None]

    def switch_at(self) -> dt.datetime | None:
        return self.since if self.next is not None else None

    def retire(self) -> Robot:
        return replace(self, retiring=None)

    def dump(self) -> str:
        def cred(c: Credential | None) -> dict[str, str] | None:
            return {"user": c.user, "password": c.password} if c else None

        return json.dumps({"current": cred(self.current), "next": cred(self.next), "retiring": cred(self.retiring),
                           "since": self.since.isoformat() if self.since else None, "handled": self.handled},
                          sort_keys=True)


def _load(raw: bytes) -> Robot:
    doc = json.loads(raw)

    def cred(d: dict[str, str] | None) -> Credential | None:
        return Credential(d["user"], d["password"]) if d else None

    current = cred(doc["current"])
    assert current is not None
    return Robot(current, cred(doc.get("next")), dt.datetime.fromisoformat(doc["since"]) if doc.get("since") else None,
                 cred(doc.get("retiring")), doc.get("handled"))


def decide(kept: bytes | None, request: str | None, now: dt.datetime, propagation: dt.timedelta) -> Robot:
    """The robot from its stored state, the rotation annotation's value (`request`) and the time."""
    if kept is None:  # a first robot: whatever the annotation says now is not a request to rotate it
        return Robot(Credential(USERS[0], secrets.token_urlsafe(24)), handled=request)
    robot = _load(kept)
    if request is not None and request != robot.handled:
        if robot.next is None and robot.retiring is None:
            other = USERS[1] if robot.current.user == USERS[0] else USERS[0]
            robot = replace(robot, next=Credential(other, secrets.token_urlsafe(24)), since=now)
        robot = replace(robot, handled=request)  # a request during a rotation is folded into it
    if robot.next is not None and robot.since is not None and now >= robot.since + propagation:
        robot = Robot(robot.next, retiring=robot.current, handled=robot.handled)
    return robot
