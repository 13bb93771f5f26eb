"""Retention: which manifests go before a garbage collection (`spec.retention`), decided without any I/O.

(tags with their digest and creation time, rules, protected references, now) -> Decision. The registry API
deletes a manifest by digest only, and that removes every tag pointing at it (distribution issue 3828): so the
unit of deletion is a digest, never a tag. First each tag is judged on its own (kept if any rule keeps it);
then a digest is deleted only when every tag on it was judged deletable, and a deletable tag that shares its
digest with a kept one is kept, with that as its reason, so nobody loses a tag they were told is kept.

A tag's age is its image config's `created` (one blob GET per digest): the API exposes no upload time.
An image without one (an index, a config with no `created`) is always kept rather than guessed at.
Protected references are the images that workloads in the cluster name (`inuse`), by tag and by digest:
a Deployment scaled to zero still names its image, and deleting it would break its next scale-up.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .spec import Retention

SHOWN = 20  # status and Events list this many tags, then only count them


@dataclass(frozen=True)
class Tag:
    repository: str
    name: str
    digest: str
    created: dt.datetime | None  # the image config's `created`; None: unknown

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.name}"


@dataclass(frozen=True)
class Protected:
    """What workloads reference in this registry: (repository, tag) and (repository, digest) pairs."""

    tags: frozenset[tuple[str, str]] = frozenset()
    digests: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Decision:
    delete: tuple[tuple[str, str], ...]  # (repository, digest), sorted
    deleted_tags: tuple[Tag, ...]  # every tag that goes with them
    kept: dict[str, str] = field(default_factory=dict)  # repository:tag -> why it stays

    def summary(self, dry_run: bool) -> dict[str, object]:
        """The bounded record of a run (status and Event): counts, and the first `SHOWN` tags of each list."""
        shared = sorted(ref for ref, why in self.kept.items() if why.startswith("shares its digest"))
        return {
            "dryRun": dry_run,
            "manifests": len(self.delete),
            "tags": len(self.deleted_tags),
            "deletedTags": [t.ref for t in self.deleted_tags[:SHOWN]],
            "keptSharedDigest": len(shared),
            "keptSharedDigestTags": shared[:SHOWN],
        }


def matches(name: str, globs: Iterable[str]) -> bool:
    """fnmatch globs, case-sensitive (repository and tag names are); `*` also crosses `/`."""
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def _own_reason(tag: Tag, rank: int | None, rules: Retention, protected: Protected, now: dt.datetime) -> str | None:
    """Why `tag` stays on its own merits (None: it may go); `rank`: 0 for the newest of its repository."""
    if (tag.repository, tag.name) in protected.tags:
        return "in use by a workload (by tag)"
    if (tag.repository, tag.digest) in protected.digests:
        return "in use by a workload (by digest)"
    if matches(tag.name, rules.keep_tags):
        return "matches keepTags"
    if tag.created is None:
        return "its image has no creation time"
    if rules.keep_newest is not None and rank is not None and rank < rules.keep_newest:
        return f"one of the {rules.keep_newest} newest"
    if rules.keep_younger_than is not None and now - tag.created < dt.timedelta(seconds=rules.keep_younger_than):
        return "younger than keepYoungerThan"
    return None


def select(tags: Iterable[Tag], rules: Retention, protected: Protected, now: dt.datetime) -> Decision:
    """Which digests to delete. Tags of repositories `rules` does not match are ignored (never deleted).
    Newest first by `created`, ties broken by tag name (descending), so the outcome is the same every run."""
    by_repo: dict[str, list[Tag]] = defaultdict(list)
    for tag in tags:
        if matches(tag.repository, rules.repositories):
            by_repo[tag.repository].append(tag)
    kept: dict[str, str] = {}
    deletable: set[Tag] = set()
    for repo_tags in by_repo.values():
        dated = sorted((t for t in repo_tags if t.created is not None), key=lambda t: (t.created, t.name),
                       reverse=True)
        rank = {t: i for i, t in enumerate(dated)}
        for tag in repo_tags:
            reason = _own_reason(tag, rank.get(tag), rules, protected, now)
            if reason:
                kept[tag.ref] = reason
            else:
                deletable.add(tag)
    by_digest: dict[tuple[str, str], list[Tag]] = defaultdict(list)
    for repo_tags in by_repo.values():
        for tag in repo_tags:
            by_digest[(tag.repository, tag.digest)].append(tag)
    delete, gone = [], []
    for key in sorted(by_digest):
        group = sorted(by_digest[key], key=lambda t: t.name)
        keepers = [t.name for t in group if t not in deletable]
        if not keepers:
            delete.append(key)
            gone += group
            continue
        for tag in group:
            if tag in deletable:
                kept[tag.ref] = f"shares its digest with kept tag {keepers[0]} (a delete would remove both)"
    return Decision(tuple(delete), tuple(gone), dict(sorted(kept.items())))
