"""Which Registry joined which RegistryIndex, as seen in the Registries' watch events.

An index's change (its spec, a rotated signing key, its deletion) must reach the Registries that joined it,
and a Registry joining or leaving must reach the index (its status lists them and its token service issues
tokens for them). Both go through the coalescers as triggers, never through polling: this map answers who
to trigger.
"""

from __future__ import annotations

Key = tuple[str, str]  # (namespace, name)


class Joins:
    def __init__(self) -> None:
        self._index_of: dict[Key, str] = {}  # (namespace, Registry) -> index name

    def track(self, namespace: str, registry: str, index: str | None) -> set[str]:
        """Record the index `registry` joins now (None: none); returns the indexes concerned, old and new."""
        key = (namespace, registry)
        before = self._index_of.pop(key, None)
        if index is not None:
            self._index_of[key] = index
        return {i for i in (before, index) if i is not None}

    def registries(self, namespace: str, index: str) -> set[str]:
        """Registries in `namespace` that joined `index`."""
        return {reg for (ns, reg), i in self._index_of.items() if ns == namespace and i == index}
