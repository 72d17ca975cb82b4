"""Migration 001's plan line: what apply will do to one document, and the problems that explain it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from helpers.migrations.m001_s3_asset_tracking.fields import SCENE_ASSET_SOURCES

BLOCKING = "blocking"


FLAGGED = "flagged"


#: Actions apply sends (helpers.steps.plan has the same set; rules cannot import plan). `track_existing` writes no
#: field: it only adds the references of assets the document already held (SCN-10, SES-8).
#: The plan line key of a document's legacy status (the dry-run's tables group by it: the migration's `status_key`).
STATUS_KEY = "legacyStatus"
#: The field of an asset reference that tells its kinds apart (the side rows' `kind`).
REFERENCE_KIND = "assetType"
CHANGING_ACTIONS = frozenset({"migrate", "fill_missing", "track_existing"})


#: Every problem code with its usual severity (mapping.md explains each and what to do).
#: `wrong_type` is blocking for keys and URLs, flagged for an error message.
PROBLEM_CODES: dict[str, str] = {
    "key_without_url": BLOCKING,
    "url_derived": FLAGGED,
    "key_derived": FLAGGED,
    "url_not_s3": BLOCKING,
    "url_not_http": BLOCKING,
    "url_plain_http": FLAGGED,
    "key_url_mismatch": BLOCKING,
    "presigned_url": FLAGGED,
    "wrong_type": BLOCKING,
    "empty_string": FLAGGED,
    "unknown_status": BLOCKING,
    "status_variant": FLAGGED,
    "missing_session": BLOCKING,
    "duplicate_s3_key": BLOCKING,
    "invalid_unicode": BLOCKING,
    "oversized_value": BLOCKING,
    "too_deeply_nested": BLOCKING,
    "new_field_conflict": BLOCKING,
    "completed_without_video": FLAGGED,
    "unknown_content_type": FLAGGED,
    "timestamp_string": FLAGGED,
    "invalid_timestamp": FLAGGED,
    "invalid_size": FLAGGED,
    "invalid_checksum": FLAGGED,
}


@dataclass(slots=True)
class DocumentPlan:
    """One plan line: what apply will do to one document, under which precondition, and why.

    `current` summarises the new-field assets the scene already holds ({"assets", "size", "keys",
    "assetsStatus"}, empty when none): with `set` it gives the scene as it will be after apply, which is
    what its session's totals and the duplicate-key check need. `untracked` names the asset types of the
    asset fields the document already holds that no reference tracks: the plan tracks them unless it blocks
    the document, and then the dry-run and verify count them as untracked assets (the core's line key
    `untrackedAssets`).
    """

    table: str
    id: str
    action: str
    session_id: str | None
    legacy_status: str | None
    expect: dict[str, Any]
    expect_absent: list[str]
    set: dict[str, Any]
    references: list[dict[str, Any]]
    problems: list[dict[str, str]]
    current: dict[str, Any] = field(default_factory=dict)
    untracked: list[str] = field(default_factory=list)

    def to_line(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "id": self.id,
            "action": self.action,
            STATUS_KEY: self.legacy_status,
            "sessionId": self.session_id,
            "expect": self.expect,
            "expectAbsent": self.expect_absent,
            "set": self.set,
            "unset": [],
            "references": self.references,
            "problems": self.problems,
            "current": self.current,
            **({"untrackedAssets": self.untracked} if self.untracked else {}),
        }

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> DocumentPlan:
        return cls(
            table=line["table"],
            id=line["id"],
            action=line["action"],
            session_id=line["sessionId"],
            legacy_status=line[STATUS_KEY],
            expect=line["expect"],
            expect_absent=line["expectAbsent"],
            set=line["set"],
            references=line["references"],
            problems=line["problems"],
            current=line["current"],
            untracked=line.get("untrackedAssets", []),
        )


@dataclass(slots=True)
class SessionTotals:
    """A session's scenes as they will be after apply: asset count, known size sum, assetsStatus counts.

    The size is summed exactly (`float_sizes` says a float joined it; a float with a fraction joins as the fraction it
    is: `known_size` rounds once), so totals added up scene by scene or a page at a time (`merge`, the dry-run's
    workers) are the same to the last bit. Convex numbers are floats, so sizes usually come as whole floats."""

    scenes: int = 0
    assets: int = 0
    size: int | float | Fraction = 0
    ready: int = 0
    errors: int = 0
    uploading: int = 0
    float_sizes: bool = False

    def add_scene(self, plan: DocumentPlan) -> None:
        self.add(*scene_contribution(plan))

    def add(self, assets: int, size: float, status: Any) -> None:
        """One scene's `scene_contribution`."""
        self.scenes += 1
        self.assets += assets
        if type(size) is float:
            self.float_sizes = True
        self.size = _exact_sum(self.size, size)
        self.ready += status == "ready"
        self.errors += status == "error"
        self.uploading += status == "uploading"

    def merge(self, other: SessionTotals) -> None:
        """Adds the totals of other scenes of the same session (a page's, counted by a worker)."""
        self.scenes += other.scenes
        self.assets += other.assets
        self.float_sizes |= other.float_sizes
        self.size = _exact_sum(self.size, other.size)
        self.ready += other.ready
        self.errors += other.errors
        self.uploading += other.uploading

    @property
    def known_size(self) -> int | float:
        """The sum of the scenes' known sizes: an int while every size was one, else the float nearest the exact sum."""
        size = self.size
        if not self.float_sizes and not isinstance(size, Fraction):
            return size
        return _float(size)


def _exact_sum(total: int | float | Fraction, size: int | float | Fraction) -> int | float | Fraction:
    """`total + size` without rounding: a whole float joins as an int, another finite one as the fraction it is.
    Infinities and NaN stay floats (and so does every sum after one), as they would in a float sum."""
    if type(size) is float:
        if not math.isfinite(size) or type(total) is float:
            return _float(total) + size
        return total + (int(size) if size.is_integer() else Fraction(size))
    if type(total) is float or type(size) is float:
        return _float(total) + _float(size)
    return total + size


def _float(value: int | float | Fraction) -> float:
    """The float nearest `value`; past the largest float, an infinity (as a float sum would reach)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def scene_contribution(plan: DocumentPlan) -> tuple[int, float, Any]:
    """What one scene adds to its session's totals after apply: its assets, their known size, its assetsStatus."""
    current = plan.current
    assets, size, status = current.get("assets", 0), current.get("size", 0), current.get("assetsStatus")
    if plan.action in CHANGING_ACTIONS:
        for asset_field in SCENE_ASSET_SOURCES:
            asset = plan.set.get(asset_field)
            if asset is not None:
                assets += 1
                size += asset.get("size", 0)
        status = plan.set.get("assetsStatus", status)
    return assets, size, status


def mark_blocking(plan: DocumentPlan, code: str, message: str, *, field_name: str = "") -> DocumentPlan:
    """A copy that changes nothing and says why (used for problems only the whole table reveals)."""
    return replace(
        plan,
        action="problem",
        expect_absent=[f for f in plan.expect_absent if f not in plan.set],
        set={},
        references=[],
        problems=[*plan.problems, problem_of(code, field_name, message, BLOCKING)],
    )


def problem_of(code: str, field_name: str, message: str, severity: str | None = None) -> dict[str, str]:
    return {"code": code, "severity": severity or PROBLEM_CODES[code], "field": field_name, "message": message}


def blocked(problems: list[dict[str, str]]) -> bool:
    return any(p["severity"] == BLOCKING for p in problems)

