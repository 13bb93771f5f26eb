"""Which watch events of a Registry's children only report the operator's own writes.

The reconcile that wrote a child already has the result, so another reconcile for its watch event would read a
dozen objects to learn nothing. Each write is matched once, by the resourceVersion it gave the object; any later
event of the child forgets it (events of one object arrive in order, so a later one means the echo has passed
or will never come).

The event often arrives before the write's own answer: the watch and the write travel on different connections,
and on a busy machine the watch wins. An event heard while a write to the same child is in flight is therefore
judged when the answer comes: if it was not that write's (someone else changed the child meanwhile, or deleted
it), `missed` names the child and the reconcile runs once more, so no trigger is ever dropped.
"""

from __future__ import annotations

Key = tuple[str, str]  # (kind, name)


class Echoes:
    def __init__(self) -> None:
        self._written: dict[Key, str] = {}  # child -> resourceVersion our last write gave it
        self._sending: dict[Key, list[str | None]] = {}  # child -> versions heard while our write is in flight
        self.missed: set[Key] = set()  # children with an event heard during a write that was not the write's

    def clear(self) -> None:
        """A new reconcile: echoes of the earlier one have come by now, or will not."""
        self._written.clear()
        self.missed = set()

    def sending(self, child: Key) -> None:
        self._sending[child] = []

    def sent(self, child: Key, version: str | None) -> None:
        """The write's answer: the resourceVersion it gave the child (None: the write failed)."""
        heard = self._sending.pop(child, [])
        if version is not None and not heard:
            self._written[child] = version
        elif any(v != version or v is None for v in heard):
            self.missed.add(child)

    def echo(self, child: Key, event: str, version: str | None) -> bool:
        """Whether this watch event only reports our own write (or will be judged when its answer comes)."""
        ours = self._written.pop(child, None)
        if event != "DELETED" and version is not None and ours == version:
            return True  # (also while a second write to it is in flight: this is the first one's echo)
        if child in self._sending:
            self._sending[child].append(None if event == "DELETED" else version)
            return True
        return False
