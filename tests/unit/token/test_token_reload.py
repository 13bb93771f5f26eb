"""File-backed values follow the kubelet's ``..data`` symlink swap and survive bad updates."""

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry_operator.token.reload import FileBacked


def reader(path: str, calls: list[str]) -> Callable[[], str]:
    def load() -> str:
        text = Path(path).read_text()
        if text.startswith("bad"):
            raise ValueError("unusable")
        calls.append(text)
        return text

    return load


def test_symlink_swap_is_seen_and_unchanged_files_are_not_reread(
    kubelet_volume: Callable[[str], Any],
) -> None:
    volume = kubelet_volume("cm")
    volume.write({"value": "one"})
    calls: list[str] = []
    watched = FileBacked([volume.path("value")], reader(volume.path("value"), calls), "value")
    assert watched.get() == watched.get() == "one" and calls == ["one"]
    volume.write({"value": "two"})
    assert watched.get() == "two" and calls == ["one", "two"]


def test_in_place_edit_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("one")
    watched = FileBacked([str(path)], reader(str(path), []), "f")
    path.write_text("three")  # different size
    assert watched.get() == "three"
    os.utime(path, ns=(0, 12345))
    path.write_text("four!")  # same size, new mtime
    assert watched.get() == "four!"


def test_broken_update_keeps_the_last_good_value_until_fixed(kubelet_volume: Callable[[str], Any]) -> None:
    volume = kubelet_volume("cm")
    volume.write({"value": "good"})
    calls: list[str] = []
    watched = FileBacked([volume.path("value")], reader(volume.path("value"), calls), "value")
    volume.write({"value": "bad"})
    assert watched.get() == "good" and watched.get() == "good"
    volume.write({"value": "fixed"})
    assert watched.get() == "fixed"


def test_missing_file_keeps_the_last_good_value(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("one")
    watched = FileBacked([str(path)], reader(str(path), []), "f")
    path.unlink()
    assert watched.get() == "one"
    path.write_text("back")
    assert watched.get() == "back"
