"""Applies generated cases to the API server in batches and records what became of each.

A batch is one namespace: its Secrets and name squatters first, then its Registries (as a user with kubectl
would send them: `fieldValidation=Strict`). Each Registry is either refused by the API server, which must say
which field, or accepted, and then must settle: `status.observedGeneration == metadata.generation` with
Ready=True, or Degraded=True with a reason. Once a batch has settled, its quiet window starts: the operator's
writes attributed to each of its Registries are counted from the kube-apiserver audit log over that window,
while the next batches are already being applied (attribution is by namespace and name, so windows may
overlap and cost no extra wall time). When a window has closed, the Registries' status is checked again,
squatters must be untouched, and the namespace is deleted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from localcluster import RESTRICTED
from registry_cases import CHILD_SUFFIXES, VICTIM_NAMESPACE, Case, SecretSeed, field_of, smaller, tls_material

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
REGISTRIES = "/apis/registry.operator.dev/v1alpha1/namespaces/{ns}/registries"
CORE = {"Secret": "secrets", "Service": "services", "ConfigMap": "configmaps"}
_FIELD_IN_MESSAGE = re.compile(r"\b(metadata\.name|spec(?:\.[\w@/-]+|\[[^\]]*\])+)")

Api = Callable[..., tuple[int, Any]]  # LocalCluster.api(method, path, body) -> (HTTP code, decoded body)
AuditRecord = tuple[float, str, str, str, str, int]  # epoch seconds, verb, resource[/sub], namespace, name, code


@dataclass
class Result:
    """What became of one case."""

    case: Case
    namespace: str
    batch: int
    rejected_fields: list[str] | None = None  # refused at create: the field paths the API server named
    rejection: str = ""  # refused at create: code and message
    outcome: str = ""  # accepted: "Ready", "Degraded:<reason>", or why it is neither; "A, then B" if it changed
    settled_after: float | None = None  # seconds from create to the first settled status
    first_message: str = ""  # the Degraded (else Ready) condition's message when it first settled
    writes: int = 0  # operator writes attributed to it in its quiet window
    write_kinds: Counter[str] = field(default_factory=Counter)
    squatters_touched: list[str] = field(default_factory=list)
    status: Any = None  # the last status read
    smallest: Case | None = None  # with PROPERTY_SHRINK: the smallest variant that still fails
    shrink_tries: int = 0

    @property
    def accepted(self) -> bool:
        return self.rejected_fields is None

    @property
    def settled(self) -> bool:
        """Whether the last status read was a settled one."""
        last = self.outcome.split(", then ")[-1]
        return last == "Ready" or last.startswith("Degraded:")


def settled_outcome(body: Mapping[str, Any]) -> str:
    """`Ready`, `Degraded:<reason>`, or a description of why the status is not (yet) a settled one."""
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    if status.get("observedGeneration") != generation:
        return f"not observed (observedGeneration {status.get('observedGeneration')} != generation {generation})"
    conditions = {c.get("type"): c for c in status.get("conditions") or ()}
    ready, degraded = conditions.get("Ready") or {}, conditions.get("Degraded") or {}
    if ready.get("status") == "True":
        return "Ready"
    if degraded.get("status") == "True" and degraded.get("reason"):
        return f"Degraded:{degraded['reason']}"
    return f"neither Ready nor Degraded (Ready {ready.get('status')}/{ready.get('reason')}, " \
           f"Degraded {degraded.get('status')}/{degraded.get('reason')})"


def _message(status: Any) -> str:
    conditions = {c.get("type"): c for c in (status or {}).get("conditions") or ()}
    degraded = conditions.get("Degraded") or {}
    chosen = degraded if degraded.get("status") == "True" else conditions.get("Ready") or {}
    return str(chosen.get("message", ""))[:400]


def rejection_fields(body: Any) -> list[str]:
    """Field paths an API refusal names: details.causes[].field, else paths quoted in the message."""
    if not isinstance(body, dict):
        return []
    # "<nil>": the API server's note that some rules were skipped because others failed, not a field.
    causes = [c.get("field") for c in (body.get("details") or {}).get("causes") or ()
              if c.get("field") and c.get("field") != "<nil>"]
    if causes:
        return sorted({field_of(f) for f in causes})
    return sorted({field_of(m) for m in _FIELD_IN_MESSAGE.findall(str(body.get("message", "")))})


class AuditLog:
    """The operator's requests from the kube-apiserver audit log (read incrementally, kept compact)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.records: list[AuditRecord] = []

    def refresh(self) -> None:
        """Read what the API server appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            self.records.append((
                _epoch(event.get("requestReceivedTimestamp")), event.get("verb", "?"), resource,
                ref.get("namespace", ""), ref.get("name", ""), (event.get("responseStatus") or {}).get("code", 0),
            ))

    def writes(self, namespace: str, since: float, until: float) -> list[AuditRecord]:
        self.refresh()
        return [r for r in self.records if r[3] == namespace and since <= r[0] < until and r[1] in WRITE_VERBS]

    def in_namespace(self, namespace: str) -> list[AuditRecord]:
        """Every request (reads too) the operator made in `namespace`."""
        self.refresh()
        return [r for r in self.records if r[3] == namespace]


def _epoch(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# The children a Registry `r` can have, by resource: `r + suffix` (registry_operator.names.ChildNames).
CHILDREN = {
    "deployments": ("", "-token"),
    "services": ("", "-token"),
    "configmaps": ("-config", "-token", "-ca"),
    "persistentvolumeclaims": ("-data",),
    "secrets": ("-ca", "-ca-key", "-tls", "-htpasswd", "-passwords", "-http-secret", "-token-tls",
                "-token-signing"),
    "registries": ("",),
    "registries/status": ("",),
}


def owners(object_name: str, resource: str, registries: Iterable[str]) -> list[str]:
    """The Registries a request's object can belong to: the Registry itself, its children, its Events. A name
    no known child has (a child added since) goes to the Registry whose name is its longest `<name>-` prefix."""
    registries = list(registries)
    if resource == "events":
        return [reg for reg in registries if object_name.startswith(reg + ".")]
    suffixes = CHILDREN.get(resource, ())
    known = [reg for reg in registries if any(object_name == reg + suffix for suffix in suffixes)]
    if known:
        return known
    prefixes = [reg for reg in registries if object_name.startswith(reg + "-")]
    return [max(prefixes, key=len)] if prefixes else []


def batches(cases: Sequence[Case], size: int) -> list[list[Case]]:
    """Cases in order, `size` per batch; Secrets renamed per case so that cases never share one, and a name
    already taken in its batch varied (Hypothesis repeats names it likes) rather than refused as a duplicate."""
    out: list[list[Case]] = []
    for i, case in enumerate(cases):
        if i % size == 0:
            out.append([])
        taken = {other.name for other in out[-1]}
        out[-1].append(replace(case.localized(f"c{i}-"), name=_variant(case.name, taken)))
    return out


def _variant(name: str, taken: set[str]) -> str:
    """`name`, or the first spelling not in `taken` that differs in one alphanumeric (leftmost first, letters
    before digits, so a sibling's suffix such as `-token` and the length, hence the name's validity, are kept)."""
    if name not in taken:
        return name
    for j, char in enumerate(name):
        if char.isascii() and char.isalnum():
            for other in "abcdefghijklmnopqrstuvwxyz0123456789":
                candidate = name[:j] + other + name[j + 1 :]
                if candidate not in taken:
                    return candidate
    return name + "-2"


@dataclass
class Batch:
    """One namespace of cases, from creation to the end of its quiet window."""

    index: int
    namespace: str
    results: list[Result]
    squatters: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> resourceVersion
    created: dict[str, float] = field(default_factory=dict)  # Registry name -> when it was accepted (monotonic)
    quiet_from: float = 0.0  # epoch seconds
    apply_seconds: float = 0.0
    settle_seconds: float = 0.0


class Runner:
    """Runs batches against one API server (admin `api`) whose audit log records the operator."""

    def __init__(self, api: Api, audit: AuditLog, settle_timeout: float, grace: float, window: float,
                 log: Callable[[str], None] = print) -> None:
        self.api = api
        self.audit = audit
        self.settle_timeout = settle_timeout
        self.grace = grace
        self.window = window
        self.log = log
        self.run_id = secrets.token_hex(2)

    def prepare_victim(self) -> None:
        """The namespace no Registry may reach into, with a password Secret `db` and a TLS Secret `web-tls`."""
        self.api("POST", "/api/v1/namespaces",
                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": VICTIM_NAMESPACE}})
        for seed in (SecretSeed("db", {"password": b"victim-password"}),
                     SecretSeed("web-tls", tls_material()["valid"], "kubernetes.io/tls")):
            code, resp = self.api("POST", f"/api/v1/namespaces/{VICTIM_NAMESPACE}/secrets",
                                  seed.manifest(VICTIM_NAMESPACE))
            if code not in (201, 409):
                raise RuntimeError(f"creating Secret {seed.name} in {VICTIM_NAMESPACE}: HTTP {code}: {resp}")

    def _ok(self, method: str, path: str, body: Any = None) -> Any:
        code, resp = self.api(method, path, body)
        if code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {code}: {resp}")
        return resp

    def start(self, index: int, cases: Sequence[Case]) -> Batch:
        """Create the batch's namespace, objects and Registries, and wait until every accepted one settled."""
        batch = self.create(index, cases)
        self.settle(batch)
        return batch

    def create(self, index: int, cases: Sequence[Case]) -> Batch:
        """Create the batch's namespace, the objects its cases need, then its Registries."""
        ns = f"prop-{self.run_id}-{index}"
        self._ok("POST", "/api/v1/namespaces",
                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": RESTRICTED}})
        batch = Batch(index, ns, [Result(case, ns, index) for case in cases])
        t0 = time.monotonic()
        for case in cases:
            for seed in case.secrets:
                self._ok("POST", f"/api/v1/namespaces/{ns}/secrets", seed.manifest(ns))
            for squatter in case.squatters:
                code, resp = self.api("POST", f"/api/v1/namespaces/{ns}/{CORE[squatter.kind]}",
                                      squatter.manifest(ns))
                if code == 201:  # a name the kind cannot have (a dotted Service name) squats nothing
                    batch.squatters[(squatter.kind, squatter.name)] = resp["metadata"]["resourceVersion"]
        for result in batch.results:
            code, resp = self.api("POST", REGISTRIES.format(ns=ns) + "?fieldValidation=Strict",
                                  result.case.manifest(ns))
            if code == 201:
                batch.created[result.case.name] = time.monotonic()
                continue
            result.rejected_fields = rejection_fields(resp)
            message = resp.get("message", resp) if isinstance(resp, dict) else resp
            result.rejection = f"HTTP {code}: {str(message)[:600]}"
        batch.apply_seconds = time.monotonic() - t0
        return batch

    def settle(self, batch: Batch) -> None:
        """Wait until every accepted Registry of the batch settled (or the timeout); its quiet window follows."""
        t0 = time.monotonic()
        self._wait_settled(batch, batch.created)
        batch.settle_seconds = time.monotonic() - t0
        batch.quiet_from = time.time() + self.grace

    def _registries(self, ns: str) -> dict[str, dict[str, Any]]:
        return {r["metadata"]["name"]: r for r in self._ok("GET", REGISTRIES.format(ns=ns))["items"]}

    def _wait_settled(self, batch: Batch, created: Mapping[str, float]) -> None:
        pending = {r.case.name: r for r in batch.results if r.accepted}
        deadline = time.monotonic() + self.settle_timeout
        while pending:
            live = self._registries(batch.namespace)
            now = time.monotonic()
            for name, result in list(pending.items()):
                body = live.get(name)
                if body is None:
                    result.outcome = "vanished after it was accepted"
                    del pending[name]
                    continue
                result.status = body.get("status")
                result.outcome = settled_outcome(body)
                if result.settled:
                    result.settled_after = now - created[name]
                    result.first_message = _message(result.status)
                    del pending[name]
            if not pending or now > deadline:
                return
            time.sleep(0.5)

    def finish(self, batch: Batch) -> None:
        """After the quiet window: count each Registry's writes, re-read status and squatters, delete."""
        until = batch.quiet_from + self.window
        names = [r.case.name for r in batch.results if r.accepted]
        per: dict[str, Counter[str]] = {n: Counter() for n in names}
        unnamed_events = 0
        for _, verb, resource, _, obj, code in self.audit.writes(batch.namespace, batch.quiet_from, until):
            if resource == "events" and not obj:
                unnamed_events += 1  # generateName: the audit log has no name; counted from the Events below
                continue
            for reg in owners(obj, resource, names) or ["(unattributed)"]:
                per.setdefault(reg, Counter())[f"{verb} {resource} {obj} -> {code}"] += 1
        events = 0
        for event in self._ok("GET", f"/api/v1/namespaces/{batch.namespace}/events")["items"]:
            created = _epoch(event["metadata"].get("creationTimestamp"))
            involved = event.get("involvedObject") or {}
            # creationTimestamp has whole seconds: the window's first second counts whole.
            if involved.get("kind") == "Registry" and int(batch.quiet_from) <= created < until:
                events += 1
                per.setdefault(involved.get("name", "?"), Counter())[f"create events ({event.get('reason')})"] += 1
        if events < unnamed_events:
            per.setdefault("(unattributed)", Counter())["create events"] += unnamed_events - events
        live = self._registries(batch.namespace)
        for result in batch.results:
            if not result.accepted:
                continue
            result.write_kinds = per[result.case.name]
            result.writes = sum(result.write_kinds.values())
            body = live.get(result.case.name)
            if body is not None:
                result.status = body.get("status")
                final = settled_outcome(body)
                if result.settled and final != result.outcome:
                    result.outcome = f"{result.outcome}, then {final}"
                elif not result.settled:
                    result.outcome = final  # settled late, or still not
        unattributed = per.get("(unattributed)")
        if unattributed:
            self.log(f"batch {batch.index}: writes no Registry name accounts for: {dict(unattributed)}")
        for (kind, name), version in batch.squatters.items():
            code, resp = self.api("GET", f"/api/v1/namespaces/{batch.namespace}/{CORE[kind]}/{name}")
            now = resp.get("metadata", {}) if code == 200 and isinstance(resp, dict) else {}
            if now.get("resourceVersion") != version or now.get("ownerReferences"):
                change = "deleted" if code == 404 else f"changed (ownerReferences {now.get('ownerReferences')})"
                for result in batch.results:
                    if (kind, name) in {(s.kind, s.name) for s in result.case.squatters} or name in [
                            result.case.name + s for s in ("",) + CHILD_SUFFIXES]:
                        result.squatters_touched.append(f"{kind} {name} {change}")
        self.api("DELETE", f"/api/v1/namespaces/{batch.namespace}")


def shrink(runner: Runner, case: Case, fails: Callable[[Result], bool], first_index: int, rounds: int = 8
           ) -> tuple[Case, int]:
    """The smallest variant of a failing `case` that still fails, and how many variants were tried.

    Each round applies every one-step-smaller variant (registry_cases.smaller) at once, each in its own
    namespace under the case's own name, waits for them to settle and for one quiet window, and continues
    from the smallest variant that still fails; it stops when none does."""
    current, tried, index = case, 0, first_index
    for _ in range(rounds):
        variants = smaller(current)
        if not variants:
            break
        batches = []
        for variant in variants:
            batches.append(runner.create(index, [variant]))
            index += 1
        for batch in batches:
            runner.settle(batch)
        time.sleep(max(0.0, max(b.quiet_from for b in batches) + runner.window - time.time()))
        for batch in batches:
            runner.finish(batch)
        tried += len(variants)
        failing = [b.results[0].case for b in batches if fails(b.results[0])]
        if not failing:
            break
        current = min(failing, key=lambda c: len(json.dumps(c.spec, default=str)))
    return current, tried
