"""Issue 9, proof by SIGKILL: the operator is killed 50 times at random moments and restarted each time: 0-2 s
after kopf is live (during the resume of every Registry), or, when the test gave it work (a new Registry, a spec
change, a new user), 0-0.3 s after that reconcile's first write went through (among its writes). Afterwards:

- every Registry is Ready for its current generation;
- the Secrets generated for the Registries that were Ready before the kills are unchanged (UID and bytes) and
  their Deployments' pod-template inputs-hash is unchanged: no regenerated material, no rolled pods;
- every Registry's material, including those created between kills, is one consistent set (certificates
  signed by the published CA, every password verifying its htpasswd line): no half-replaced material.

The operator's traffic goes through the fault proxy with no faults, only to count writes per Registry.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from faultkit import (
    MIX,
    add_user,
    all_ready,
    changes,
    create_password_secret,
    create_registry,
    generated_secrets,
    inconsistencies,
    inputs_hashes,
    patch_spec,
    referenced_users,
    report,
    wait,
)
from faultproxy import FaultProxy, writes_by
from lightkube import Client

KILLS = 50
MAX_DELAY = 2.0  # seconds after kopf is live
WRITE_DELAY = 0.3  # after the first write of the work it was given: a reconcile's writes take about that long
# Before the kills: a subset of the mix (the proxy test covers all of it), so each restart's resume stays cheap.
SETTLED = ("gen-a", "ref-a", "tok-a", "tls-a")
# Created during the kills, each with the spec of a Registry of the mix.
NEW = {f"new-{i}": MIX[base] for i, base in enumerate(("gen-b", "ref-b", "tok-b", "tls-b", "gen-a", "tok-a",
                                                        "ref-a", "tls-a"))}  # fmt: skip


def _work(kube_client: Client, namespace: str) -> dict[int, Callable[[], None]]:
    """Kill number -> the change made while that operator runs: a new Registry every 6 kills (from 1), a
    `podAnnotations` change of a settled one every 6 (from 4), a user added to a new one every 6 (from 9)."""
    new = list(NEW)
    work: dict[int, Callable[[], None]] = {}
    for i, name in enumerate(new):
        work[1 + 6 * i] = lambda n=name: create_registry(kube_client, namespace, n, NEW[n])
    for i in range(8):
        settled = SETTLED[i % len(SETTLED)]
        work[4 + 6 * i] = lambda n=settled, i=i: patch_spec(
            kube_client, namespace, n, {"podAnnotations": {"faults.test/kill": str(i)}}
        )
    for i, name in enumerate(new[:6]):
        work[9 + 6 * i] = lambda n=name: add_user(kube_client, namespace, n, "frank")
    assert len(work) == len(new) + 8 + 6 and max(work) < KILLS, "two changes at the same kill"
    return work


def _first_write(proxy: FaultProxy, since: float, timeout: float) -> None:
    """Wait until the operator's first write since `since` went through (at most `timeout` s): the kill that
    follows then lands among that reconcile's writes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(r.write for r in proxy.snapshot(since)):
        time.sleep(0.02)


def test_sigkill_50_times_changes_no_material(kube_client, namespace, fault_proxy, proxied_kubeconfig, operators):
    rng = random.Random(fault_proxy.seed)
    t_start = time.time()
    create_password_secret(kube_client, namespace)
    operator = operators.start(proxied_kubeconfig, namespace)
    for name in SETTLED:
        create_registry(kube_client, namespace, name, MIX[name])
    wait(all_ready(kube_client, namespace, SETTLED), 120, "the first Registries Ready before the kills")
    time.sleep(2)  # the last child events
    before = generated_secrets(kube_client, namespace)
    hashes_before = inputs_hashes(kube_client, namespace)
    operators.kill(operator)

    work = _work(kube_client, namespace)
    delays: list[float] = []
    starts: list[float] = []
    lives: list[tuple[float, float]] = []  # (live, killed), epoch seconds
    t_kills = time.monotonic()
    for kill in range(KILLS):
        t0 = time.monotonic()
        operator = operators.start(proxied_kubeconfig, namespace)
        live = time.time()
        starts.append(time.monotonic() - t0)
        if kill in work:
            work[kill]()
            _first_write(fault_proxy, live, timeout=5)
            delays.append(rng.uniform(0, WRITE_DELAY))
        else:
            delays.append(rng.uniform(0, MAX_DELAY))
        time.sleep(delays[-1])
        operators.kill(operator)
        lives.append((live, time.time()))
    kill_phase = time.monotonic() - t_kills
    # A kill "mid-write" here: the killed operator had written something within the last second of its life.
    records = fault_proxy.snapshot(t_start)
    writing = sum(1 for live, killed in lives
                  if any(r.write and max(live, killed - 1.0) <= r.at < killed for r in records))  # fmt: skip
    new = list(NEW)

    operator = operators.start(proxied_kubeconfig, namespace)
    everything = [*SETTLED, *new]
    converged = wait(all_ready(kube_client, namespace, everything), 120, "every Registry Ready after the kills")
    time.sleep(2)

    per_registry = writes_by(fault_proxy.snapshot(t_start), everything)
    after = generated_secrets(kube_client, namespace)
    changed = changes(before, after)
    hashes_after = inputs_hashes(kube_client, namespace)
    rolled = {d: (h, hashes_after.get(d)) for d, h in hashes_before.items() if hashes_after.get(d) != h}
    broken = {n: problems for n in everything
              if (problems := inconsistencies(kube_client, namespace, n,
                                              referenced_users(MIX.get(n) or NEW[n])))}  # fmt: skip
    report(f"sigkill: {KILLS} kills in {kill_phase:.0f} s (operator live after {min(starts):.1f}-{max(starts):.1f} s, "
           f"killed {min(delays):.2f}-{max(delays):.2f} s later; {len(work)} changes made meanwhile; {writing} "
           f"kills within 1 s of a write), then all {len(everything)} Ready in {converged:.1f} s")  # fmt: skip
    report(f"sigkill: generated Secrets changed {len(changed)} of {len(before)}; Deployments rolled "
           f"{len(rolled)} of {len(hashes_before)}; Registries with inconsistent material {len(broken)} of "
           f"{len(everything)}")  # fmt: skip
    report(
        "sigkill: writes per Registry over the whole test: "
        + ", ".join(f"{n} {per_registry[n]}" for n in everything)
        + f"; unattributed {per_registry['']}"
    )
    assert not changed, changed
    assert not rolled, rolled
    assert not broken, broken
    operator.assert_running()
