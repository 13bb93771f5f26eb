"""`watches.follow` on the real API server: the listing is told apart from later events, only labelled objects
arrive, and a watch the server closes resumes from the last version it saw, without replaying what was listed."""

from __future__ import annotations

import asyncio

from lightkube import KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap
from lightkube.resources.policy_v1 import PodDisruptionBudget

from registry_operator import watches

LABELS = {"app.kubernetes.io/managed-by": "registry-operator"}


def _map(name: str, namespace: str, labelled: bool) -> ConfigMap:
    return ConfigMap(metadata=ObjectMeta(name=name, namespace=namespace, labels=LABELS if labelled else None))


def test_follow_lists_then_watches_and_resumes_without_replay(kubeconfig, namespace, monkeypatch, caplog):
    from lightkube import AsyncClient

    monkeypatch.setattr(watches, "SERVER_TIMEOUT", 2)  # the server closes each watch request after 2 s
    seen: list[tuple[str | None, str]] = []

    def handler(type_, meta) -> None:
        seen.append((type_, meta.name))

    async def wait_for(event: tuple[str | None, str], timeout: float = 20) -> None:
        for _ in range(int(timeout * 10)):
            if event in seen:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{event} not seen in {timeout}s: {seen}")

    async def main() -> None:
        client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="registry-operator-tests")
        await client.create(_map("before", namespace, labelled=True))
        await client.create(_map("unlabelled", namespace, labelled=False))
        watch = watches.Watch(ConfigMap, handler, LABELS)
        empty = watches.Watch(PodDisruptionBudget, handler, LABELS)  # nothing to list: `items` is null
        tasks = [asyncio.create_task(watches.follow(client, w, namespace, lambda _: True, lambda w=w: seen.append(
            ("listed", w.resource.__name__)))) for w in (watch, empty)]  # fmt: skip
        try:
            await wait_for((None, "before"))
            await client.create(_map("after", namespace, labelled=True))
            await wait_for(("ADDED", "after"))
            await asyncio.sleep(5)  # at least two watch requests closed by the server and resumed
            await client.delete(ConfigMap, "after", namespace=namespace)
            await wait_for(("DELETED", "after"))
        finally:
            for task in tasks:
                task.cancel()
            await client.close()

    caplog.set_level("INFO", logger="registry_operator.watches")
    asyncio.run(main())
    assert not caplog.records, [r.getMessage() for r in caplog.records]  # no failure, no retry
    names = {name for _, name in seen}
    assert "unlabelled" not in names
    assert seen.count((None, "before")) == 1 and ("ADDED", "before") not in seen, seen  # resumed, not replayed
    assert seen.count(("ADDED", "after")) == 1, seen
    # Each listing at start is said done once, after its objects (the first reconciles wait for this).
    assert seen.count(("listed", "ConfigMap")) == 1 and seen.count(("listed", "PodDisruptionBudget")) == 1, seen
    assert seen.index((None, "before")) < seen.index(("listed", "ConfigMap")), seen
