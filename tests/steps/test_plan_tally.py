"""The dry-run's tables and problem rows (helpers.steps.plan_tally): counted line by line, or a page at a time by
workers and merged, they come out the same (counts, the order plan.json shows keys in, examples, messages)."""

from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.migrations.m001_s3_asset_tracking import MIGRATION as M001
from helpers.steps.migration import PlanLine
from helpers.steps.plan_tally import EXAMPLES_PER_REASON, PlanPage, PlanTally, ProblemRows

CHANGING = M001.changing_actions

problems = st.lists(
    st.fixed_dictionaries({
        "code": st.sampled_from(["bad_url", "wrong_type", "duplicate_s3_key"]),
        "severity": st.sampled_from(["blocking", "flagged"]),
        "message": st.sampled_from(["first, with a comma", 'a "quoted" one', "line\nbreak"]),
        "field": st.sampled_from(["s3ChunkUrl", ""]),
    }),
    max_size=3,
)
plan_lines = st.lists(
    st.builds(
        lambda table, i, action, status, kinds, found, untracked: M001.encode({
            "table": table, "id": f"{table}-{i}", "action": action, "legacyStatus": status,
            "references": [{"assetType": kind} for kind in kinds], "problems": found,
            **({"untrackedAssets": ["video"] * untracked} if untracked else {}),
        }),
        st.sampled_from(["scenes", "videoSessions"]), st.integers(0, 10**6), st.sampled_from(["migrate", "problem", "already_migrated"]),
        st.sampled_from(["completed", "failed", None]), st.lists(st.sampled_from(["video", "thumbnail"]), max_size=2), problems,
        st.integers(0, 2),
    ),
    max_size=40,
)


def tallied(lines: list[PlanLine]) -> dict[str, Any]:
    tally = PlanTally(CHANGING)
    for line in lines:
        tally.add(line)
    return as_json(tally)


def as_json(tally: PlanTally) -> dict[str, Any]:
    """The summary fields as plan.json writes them: key order included."""
    fields = tally.summary_fields()
    return {**fields, "problems": [p.model_dump() for p in fields["problems"]], "untracked_assets": [u.model_dump() for u in fields["untracked_assets"]],
            "order": [list(fields["actions"]), {t: list(s) for t, s in fields["by_status"].items()}, list(fields["references_by_type"])]}


def rows(lines: list[PlanLine]) -> str:
    text = io.StringIO()
    writer = ProblemRows(text)
    for line in lines:
        writer.add(line)
    return text.getvalue()


@settings(max_examples=200, deadline=None)
@given(plan_lines, st.lists(st.integers(1, 40), max_size=6))
def test_pages_merged_in_order_tally_and_write_what_lines_one_by_one_do(lines: list[PlanLine], cuts: list[int]) -> None:
    pages, rest = [], lines
    for cut in cuts:
        pages.append(rest[:cut])
        rest = rest[cut:]
    pages.append(rest)
    merged = PlanTally(CHANGING)
    encoded = [PlanPage.of(page, CHANGING) for page in pages]
    for page in encoded:
        merged.merge(page.tally)
    assert as_json(merged) == tallied(lines)
    assert b"".join(page.raw for page in encoded) == b"".join(line.raw for line in lines)
    assert "".join(page.problem_rows for page in encoded) == rows(lines)


def test_a_document_with_one_reason_on_several_fields_counts_once() -> None:
    tally = PlanTally(CHANGING)
    twice = [{"code": "bad_url", "severity": "blocking", "message": "field a"}, {"code": "bad_url", "severity": "blocking", "message": "field b"}]
    tally.add(M001.encode({"table": "scenes", "id": "s1", "action": "problem", "problems": twice}))
    tally.add(M001.encode({"table": "scenes", "id": "s2", "action": "problem", "problems": twice[:1]}))
    [problem] = tally.problems.values()
    assert (problem.count, problem.examples, problem.message) == (2, ["s1", "s2"], "field a")


def test_a_merged_reason_keeps_its_first_message_and_first_examples() -> None:
    def page(ids: range, message: str) -> PlanTally:
        return PlanPage.of([M001.encode({"table": "scenes", "id": f"s{i}", "action": "problem", "problems": [
            {"code": "bad_url", "severity": "blocking", "message": message}]}) for i in ids], CHANGING).tally

    merged = page(range(3), "earlier")
    merged.merge(page(range(3, 9), "later"))
    [problem] = merged.problems.values()
    assert (problem.count, problem.message) == (9, "earlier")
    assert problem.examples == [f"s{i}" for i in range(EXAMPLES_PER_REASON)]


def test_untracked_assets_count_only_on_documents_the_plan_leaves_alone() -> None:
    lines = [M001.encode({"table": "scenes", "id": f"s{i}", "action": action, "untrackedAssets": ["video", "thumbnail"]})
             for i, action in enumerate(["problem", "migrate", "problem"])]
    merged = PlanPage.of(lines[:1], CHANGING).tally
    merged.merge(PlanPage.of(lines[1:], CHANGING).tally)
    [untracked] = merged.summary_fields()["untracked_assets"]
    assert (untracked.documents, untracked.assets, untracked.examples) == (2, 4, ["s0", "s2"])
