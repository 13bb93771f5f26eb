"""Status, computed from scratch on every reconcile: (spec, problems, live workloads, generation) -> status.

Nothing is accumulated: the same observations always give the same status, so writing it only when it differs
from what is stored makes a settled Registry cost no status writes. The one piece of history kept is each
condition's `lastTransitionTime`, carried over while the condition's status stays the same.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .material import Problem
from .names import ChildNames
from .spec import Auth, IndexSpec, RegistrySpec, parse_duration

Obj = dict[str, Any]


@dataclass(frozen=True)
class Rollout:
    """The facts about one Deployment that status needs."""

    desired: int
    ready: int
    available: int
    updated: int
    current: bool  # the controller has seen the latest spec
    stuck: bool  # ProgressDeadlineExceeded

    @property
    def complete(self) -> bool:
        return self.current and self.updated >= self.desired and self.available >= self.desired

    @classmethod
    def of(cls, deployment: Mapping[str, Any] | None) -> Rollout | None:
        if deployment is None:
            return None
        status = deployment.get("status") or {}
        desired = (deployment.get("spec") or {}).get("replicas", 1)
        stuck = any(
            c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
            for c in status.get("conditions") or ()
        )
        return cls(
            desired=desired,
            ready=status.get("readyReplicas", 0),
            available=status.get("availableReplicas", 0),
            updated=status.get("updatedReplicas", 0),
            current=status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1),
            stuck=stuck,
        )


# Problems that stop the spec from being applied (the others degrade a Registry that is otherwise applied).
WRITE_BLOCKERS = {
    "InvalidSpec", "InvalidName", "ImageNotAllowed", "NameConflict", "ApplyRefused", "ApplyFailed", "Forbidden",
    "QuotaExceeded",
    "IndexNotFound", "IndexInOtherNamespace", "IndexNotReady",
}


def _condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> Obj:
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _config_problems(spec: RegistrySpec) -> list[Problem]:
    """Combinations the schema accepts but the registry cannot honour."""
    out = []
    if spec.replicas > spec.effective_replicas:
        storage = "an emptyDir" if spec.storage.claim is None else "a claim that is not ReadWriteMany"
        out.append(Problem(
            "ReplicasUnsupported",
            f"{spec.replicas} replicas requested, running 1: pods cannot share {storage} "
            "(use a ReadWriteMany persistentVolumeClaim or storage.s3 to scale out)",
        ))
    return out + access_problems(spec.auth)


def access_problems(auth: Auth) -> list[Problem]:
    """Rules and groups naming users or groups that do not exist (a Registry's auth or a RegistryIndex)."""
    users = {u.name for u in auth.users}
    unknown_users = {u for g in auth.groups.values() for u in g} - users
    unknown_users |= {u for r in auth.access for u in r.users} - users
    unknown_groups = {g for r in auth.access for g in r.groups} - set(auth.groups)
    if not unknown_users and not unknown_groups:
        return []
    # Checked here, not in the schema: CEL over nested lists exceeds the API server's cost budget.
    named = [f"user {u!r}" for u in sorted(unknown_users)] + [f"group {g!r}" for g in sorted(unknown_groups)]
    return [Problem(
        "AccessRuleInvalid",
        f"auth names {', '.join(named)} that auth.users / auth.groups do not define; they match nobody",
    )]


def weaknesses(spec: RegistrySpec) -> list[Problem]:
    """What works but is weak, said out loud (a `Warning` condition and Event), never refused: the user chose it."""
    out = []
    if spec.auth.mode == "none":
        out.append(Problem("AuthDisabled", "auth.mode is none: anyone who reaches the registry may push and delete"))
    if not spec.tls_enabled:
        out.append(Problem("TLSDisabled", "tls.mode is Disabled: credentials and images travel in clear text"))
    if spec.auth.mode == "token" and (spec.auth.token_realm or "").startswith("http://"):
        out.append(Problem("PlainTokenRealm", "auth.tokenRealm is http://: passwords travel in clear text"))
    if spec.proxy is not None and spec.proxy.remote_url.startswith("http://"):
        out.append(Problem("PlainUpstream", "proxy.remoteURL is http://: images and the upstream login travel in "
                                            "clear text"))
    if spec.storage.s3 and (spec.storage.s3.endpoint or "").startswith("http://"):
        out.append(Problem("PlainS3Endpoint", "storage.s3.endpoint is http://: image data and signed requests "
                                              "travel in clear text"))
    if not spec.storage.collectable:
        out.append(Problem("EphemeralStorage", "storage is an emptyDir: every image is lost when the pod is "
                                               "replaced (a new certificate or config rolls it)"))
    return out


def _rollout_state(rollouts: Mapping[str, Rollout | None]) -> tuple[bool, str, str]:
    """(progressing, reason, message) over the workloads of one Registry."""
    for name, rollout in rollouts.items():
        if rollout is None:
            return True, "Creating", f"Deployment {name!r} does not exist yet"
    for name, rollout in rollouts.items():
        assert rollout is not None
        if not rollout.complete:
            return True, "RolloutInProgress", (
                f"Deployment {name!r}: {rollout.updated} of {rollout.desired} replicas updated, "
                f"{rollout.available} available"
            )
    return False, "RolloutComplete", "all replicas are updated and available"


def compute(
    spec: RegistrySpec,
    generation: int,
    problems: Sequence[Problem],
    workloads: Mapping[str, Mapping[str, Any] | None],
    published: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
    retrying: bool = False,
    pull_problems: Sequence[Problem] | None = None,
    upstream_problems: Sequence[Problem] | None = None,
    node_problems: Sequence[Problem] | None = None,
    redis_problems: Sequence[Problem] | None = None,
) -> Obj:
    """The Registry's status. `workloads`: Deployment name -> live object; `published`: endpoint, Secrets;
    `retrying`: a write failed and will be tried again; `pull_problems`: what keeps the pull Secrets from being
    everywhere spec.pullSecrets asks (None: no pull Secrets asked for); `upstream_problems`: what the probe of
    a pull-through cache's upstream found (None: not a cache, or not probed); `node_problems`: what keeps the
    trust of spec.nodeTrust from the nodes (None: not asked for); `redis_problems`: what the probe of spec.redis
    found (see redisprobe; None: no Redis, or not probed)."""
    problems = [*problems, *_config_problems(spec)]
    rollouts = {name: Rollout.of(obj) for name, obj in workloads.items()}
    progressing, rollout_reason, rollout_message = _rollout_state(rollouts)
    blocker = next((p for p in problems if p.reason in WRITE_BLOCKERS), None)
    if retrying and blocker:
        progressing, rollout_reason = True, "Retrying"
        rollout_message = f"a write failed, retrying with backoff: {blocker.message}"
    elif blocker:
        progressing, rollout_reason = False, blocker.reason
        rollout_message = f"not applied: {blocker.message}"
    stuck = [name for name, r in rollouts.items() if r is not None and r.stuck]
    if stuck:
        problems.append(Problem("RolloutStuck", f"Deployment {stuck[0]!r} exceeded its progress deadline"))

    if problems:
        degraded = _condition("Degraded", True, problems[0].reason, "; ".join(p.message for p in problems), generation)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "the Registry is as its spec asks", generation)
    registry = rollouts.get(ChildNames(spec.name).deployment)
    if problems:
        ready = _condition("Ready", False, problems[0].reason, problems[0].message, generation)
    elif progressing and upstream_problems:  # distribution exits at start when its upstream does not answer
        ready = _condition("Ready", False, upstream_problems[0].reason,
                           f"{rollout_message}; {upstream_problems[0].message}", generation)
    elif progressing:
        ready = _condition("Ready", False, rollout_reason, rollout_message, generation)
    else:
        cache = f" as a pull-through cache of {spec.proxy.remote_url} (pushes are refused)" if spec.proxy else ""
        ready = _condition("Ready", True, "Available", f"serving at {published.get('endpoint')}{cache}", generation)
    weak = weaknesses(spec)
    warning = (_condition("Warning", True, weak[0].reason, "; ".join(w.message for w in weak), generation) if weak
               else _condition("Warning", False, "None", "nothing weak in this spec", generation))
    conditions = [ready, _condition("Progressing", progressing, rollout_reason, rollout_message, generation), degraded,
                  warning]
    if pull_problems is not None:
        # Its own condition, not Degraded: the registry serves whatever happens in other namespaces.
        count = (published.get("pullSecrets") or {}).get("count", 0)
        conditions.append(
            _condition("PullSecrets", False, pull_problems[0].reason,
                       "; ".join(p.message for p in pull_problems), generation) if pull_problems
            else _condition("PullSecrets", True, "Distributed", f"current in {count} namespace(s)", generation))
    if node_problems is not None:
        # Its own condition too: nodes trusting the registry or not, it serves.
        hosts = (published.get("nodeTrust") or {}).get("hosts") or ()
        conditions.append(
            _condition("NodeTrust", False, node_problems[0].reason,
                       "; ".join(p.message for p in node_problems), generation) if node_problems
            else _condition("NodeTrust", True, "Published", f"node agents trust {len(hosts)} host:port name(s)",
                            generation))

    if spec.proxy is not None and upstream_problems is not None:
        # Its own condition, not Degraded: once content is cached, the cache serves it while the upstream is down.
        conditions.append(
            _condition("Upstream", False, upstream_problems[0].reason, upstream_problems[0].message, generation)
            if upstream_problems else _condition("Upstream", True, "Reachable", upstream_message(spec), generation))

    if spec.redis is not None and redis_problems is not None:
        # Its own condition, not Degraded: without its cache the registry serves from storage, only slower.
        conditions.append(
            _condition("Redis", False, redis_problems[0].reason, redis_problems[0].message, generation)
            if redis_problems else _condition("Redis", True, "Reachable", f"blob-descriptor cache in Redis "
                                              f"{spec.redis.address} db {spec.redis.db}", generation))

    stamped = _stamp(conditions, (previous or {}).get("conditions") or (), now)
    status: Obj = {
        "observedGeneration": generation,
        "conditions": stamped,
        "replicas": spec.effective_replicas,
        "readyReplicas": registry.ready if registry else 0,
        **{k: v for k, v in published.items() if v is not None},
    }
    return status


def upstream_message(spec: RegistrySpec) -> str:
    """What a pull-through cache does, said in its `Upstream` condition: where pulls come from, and that pushes
    are refused (distribution answers them 405 UNSUPPORTED)."""
    assert spec.proxy is not None
    ttl = "7 days" if spec.version == "2.8" else spec.proxy.ttl or "168h"
    keep = "forever" if spec.proxy.ttl is not None and parse_duration(spec.proxy.ttl) == 0 else f"for {ttl}"
    return (f"a pull-through cache of {spec.proxy.remote_url}: pulls fetch what is not cached and keep it {keep}; "
            "pushes and deletes are refused (405 UNSUPPORTED)")


def compute_index(
    spec: IndexSpec,
    generation: int,
    problems: Sequence[Problem],
    deployment: Mapping[str, Any] | None,
    published: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    now: dt.datetime,
    retrying: bool = False,
) -> Obj:
    """A RegistryIndex's status: Ready, Progressing and Degraded of its token service, by the same rules as a
    Registry's; `published` lists its Registries and where clients find it."""
    problems = [*problems, *access_problems(spec.auth)]
    progressing, reason, message = _rollout_state({ChildNames(spec.name).token: Rollout.of(deployment)})
    blocker = next((p for p in problems if p.reason in WRITE_BLOCKERS), None)
    if blocker:
        progressing, reason = retrying, "Retrying" if retrying else blocker.reason
        message = f"{'a write failed, retrying with backoff' if retrying else 'not applied'}: {blocker.message}"
    if problems:
        degraded = _condition("Degraded", True, problems[0].reason, "; ".join(p.message for p in problems), generation)
        ready = _condition("Ready", False, problems[0].reason, problems[0].message, generation)
    else:
        degraded = _condition("Degraded", False, "AsExpected", "the RegistryIndex is as its spec asks", generation)
        ready = (_condition("Ready", False, reason, message, generation) if progressing else
                 _condition("Ready", True, "Available", f"issuing tokens at {published.get('tokenRealm')}", generation))
    conditions = [ready, _condition("Progressing", progressing, reason, message, generation), degraded]
    return {
        "observedGeneration": generation,
        "conditions": _stamp(conditions, (previous or {}).get("conditions") or (), now),
        **{k: v for k, v in published.items() if v is not None},
    }


def _stamp(conditions: list[Obj], previous: Sequence[Mapping[str, Any]], now: dt.datetime) -> list[Obj]:
    """Add `lastTransitionTime`: kept from the previous condition of the same type unless its status changed."""
    before = {c.get("type"): c for c in previous}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for c in conditions:
        old = before.get(c["type"])
        same = old is not None and old.get("status") == c["status"] and old.get("lastTransitionTime")
        out.append({**c, "lastTransitionTime": old["lastTransitionTime"] if same else stamp})
    return out


def transitions(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(event type, reason, message) worth an Event: Ready or Degraded changed status or reason."""
    before = {c.get("type"): c for c in (previous or {}).get("conditions") or ()}
    events = []
    for c in current["conditions"]:
        old = before.get(c["type"], {})
        if (old.get("status"), old.get("reason")) == (c["status"], c["reason"]):
            continue
        if (c["type"] in ("Degraded", "Warning") and c["status"] == "True") or (
                c["type"] in ("PullSecrets", "Upstream", "NodeTrust", "Redis") and c["status"] == "False"):
            events.append(("Warning", c["reason"], c["message"]))
        elif c["type"] == "Ready" and c["status"] == "True":
            events.append(("Normal", "Ready", c["message"]))
    return events
