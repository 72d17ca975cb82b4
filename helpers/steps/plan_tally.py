"""The dry-run's tables and problems.csv, counted from encoded plan lines: one line at a time in the main process, or
a page at a time in a worker process (`PlanPage`) and merged there in plan order.

The plan's summary must be the same for any number of workers, so a page's tally merged into the run's gives
exactly what adding its lines one by one would: the counts add up, a key first seen in a page comes after those the
run saw before (dicts keep that order, and plan.json shows it), and each reason keeps its first five examples and
its first message.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from pydantic import BaseModel, Field

from helpers.steps.migration import PlanLine

EXAMPLES_PER_REASON = 5
PROBLEM_COLUMNS = ("table", "id", "action", "code", "severity", "field", "message")


class ProblemCount(BaseModel):
    table: str
    code: str
    severity: str
    count: int
    examples: list[str] = Field(default_factory=list)
    message: str = ""


class UntrackedAssets(BaseModel):
    """Asset fields documents already hold that no reference tracks, on documents the plan leaves alone (blocked):
    apply adds no reference for them, so "tracking complete" does not cover them."""

    table: str
    documents: int = 0
    assets: int = 0
    examples: list[str] = Field(default_factory=list)


class PlanTally:
    """Counts for the dry-run tables, filled while lines stream past (plain dicts: a worker's tally is pickled)."""

    def __init__(self, changing_actions: frozenset[str]) -> None:
        self.changing = changing_actions
        self.actions: dict[str, dict[str, int]] = {}
        self.by_status: dict[str, dict[str, dict[str, int]]] = {}
        self.references: dict[str, int] = {}
        self.problems: dict[tuple[str, str, str], ProblemCount] = {}
        self.untracked: dict[str, UntrackedAssets] = {}

    def summary_fields(self) -> dict[str, Any]:
        """What the plan's summary (plan.json) says of the lines counted."""
        return {
            "documents": sum(sum(counts.values()) for counts in self.actions.values()),
            "actions": {table: dict(counts) for table, counts in self.actions.items()},
            "by_status": {table: {status: dict(c) for status, c in statuses.items()} for table, statuses in self.by_status.items()},
            "references_by_type": dict(self.references),
            "problems": sorted(self.problems.values(), key=lambda p: (p.table, -p.count, p.code)),
            "untracked_assets": [self.untracked[table] for table in sorted(self.untracked)],
        }

    def add(self, line: PlanLine) -> None:
        table, action = line.table, line.action
        _count(self.actions.setdefault(table, {}), action, 1)
        _count(self.by_status.setdefault(table, {}).setdefault(line.status, {}), action, 1)
        for kind in line.side_kinds:
            _count(self.references, kind, 1)
        if line.untracked and action not in self.changing:  # a document the plan leaves alone, holding untracked fields
            entry = self.untracked.get(table)
            if entry is None:
                entry = self.untracked[table] = UntrackedAssets(table=table)
            entry.documents += 1
            entry.assets += line.untracked
            _keep_examples(entry.examples, [line.id])
        counted = set()
        for problem in line.problems:
            key = (table, problem["code"], problem["severity"])
            if key in counted:  # a document counts once per reason, however many of its fields have it
                continue
            counted.add(key)
            reason = self.problems.get(key)
            if reason is None:
                reason = self.problems[key] = ProblemCount(
                    table=table, code=problem["code"], severity=problem["severity"], count=0, message=problem["message"]
                )
            reason.count += 1
            _keep_examples(reason.examples, [line.id])

    def merge(self, later: PlanTally) -> None:
        """Adds the tally of the lines that come right after those counted here (a page's, from a worker): the same
        as adding them one by one. `later` is consumed: its entries may become this tally's."""
        for table, counts in later.actions.items():
            _add_counts(self.actions.setdefault(table, {}), counts)
        for table, statuses in later.by_status.items():
            mine = self.by_status.setdefault(table, {})
            for status, counts in statuses.items():
                _add_counts(mine.setdefault(status, {}), counts)
        _add_counts(self.references, later.references)
        for table, theirs in later.untracked.items():
            entry = self.untracked.setdefault(table, theirs)
            if entry is not theirs:
                entry.documents += theirs.documents
                entry.assets += theirs.assets
                _keep_examples(entry.examples, theirs.examples)
        for key, reason in later.problems.items():
            first = self.problems.setdefault(key, reason)
            if first is not reason:  # the first message stays
                first.count += reason.count
                _keep_examples(first.examples, reason.examples)


def _count(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def _add_counts(counts: dict[str, int], later: dict[str, int]) -> None:
    for key, n in later.items():
        _count(counts, key, n)


def _keep_examples(examples: list[str], later: list[str]) -> None:
    examples.extend(later[: EXAMPLES_PER_REASON - len(examples)])


class ProblemRows:
    """problems.csv: every document with a problem, one row per problem (the full list behind the examples)."""

    def __init__(self, sink: TextIO) -> None:
        self.writer = csv.writer(sink)

    def header(self) -> None:
        self.writer.writerow(PROBLEM_COLUMNS)

    def add(self, line: PlanLine) -> None:
        for problem in line.problems:
            self.writer.writerow(
                [line.table, line.id, line.action, problem["code"], problem["severity"], problem.get("field", ""), problem["message"]]
            )


@dataclass(frozen=True, slots=True)
class PlanPage:
    """A page of encoded plan lines as a worker process hands it back: the bytes the plan file stores, the rows
    problems.csv stores and their tally. The main process then writes and merges a page, never a line."""

    raw: bytes
    problem_rows: str
    tally: PlanTally

    @classmethod
    def of(cls, lines: Sequence[PlanLine], changing_actions: frozenset[str]) -> PlanPage:
        tally, problem_rows = count_lines(lines, changing_actions)
        return cls(b"".join(line.raw for line in lines), problem_rows, tally)


def count_lines(lines: Iterable[PlanLine], changing_actions: frozenset[str]) -> tuple[PlanTally, str]:
    """The tally of some lines and their problems.csv rows (their bytes are not read)."""
    tally, text = PlanTally(changing_actions), io.StringIO()
    rows = ProblemRows(text)
    for line in lines:
        tally.add(line)
        rows.add(line)
    return tally, text.getvalue()
