"""Apply's checkpoint as the tests read and damage it, in either format (helpers.evidence.checkpoint_file): its
entries, how many, and the torn last entry a kill mid-write leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.evidence.checkpoint_file import iter_entries


def entries(path: Path) -> list[dict[str, Any]]:
    """Every whole entry of the checkpoint, the complete mark included."""
    return [entry for entry, _ in iter_entries(path)]


def count(path: Path) -> int:
    """How many whole entries the checkpoint holds now (0 for none yet): read while apply appends to it."""
    return sum(1 for _ in iter_entries(path))


def tear_last(path: Path, keep: float = 0.5) -> None:
    """What a kill in the middle of writing the last batch's entry leaves: its first `keep` share of bytes. A
    checkpoint that ends with the complete mark is left as it is (apply writes the mark after the last batch)."""
    found = list(iter_entries(path))
    if found and not found[-1][0].get("complete"):
        start = found[-2][1] if len(found) > 1 else 0
        path.write_bytes(path.read_bytes()[: start + int((found[-1][1] - start) * keep)])
