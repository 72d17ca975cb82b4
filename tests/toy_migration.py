"""A migration the runbook does not ship, for tests of the core: counts the words of a `notes` table's `text`.

If the core knew anything of migration 001, running this one through it would show it. Not a test module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from helpers.steps.migration import (
    DocumentCheck,
    Joined,
    Migration,
    PlanInputs,
    Verdict,
    verdict,
)


def plan_note(doc: dict[str, Any]) -> dict[str, Any]:
    text = doc.get("text")
    line = {"table": "notes", "id": doc["_id"], "status": doc.get("status"), "unset": [], "references": []}
    if type(text) is not str:
        problem = {"code": "no_text", "severity": "blocking", "message": "text is not a text", "field": "text"}
        return {**line, "action": "problem", "expect": {}, "expectAbsent": [], "set": {}, "problems": [problem]}
    if "wordCount" in doc:
        return {**line, "action": "no_change", "expect": {}, "expectAbsent": [], "set": {}, "problems": []}
    return {**line, "action": "count", "expect": {"text": text}, "expectAbsent": ["wordCount"],
            "set": {"wordCount": len(text.split())}, "problems": []}


def planner(inputs: PlanInputs) -> Iterator[dict[str, Any]]:
    for page in inputs.pages("notes", "notes"):
        yield from (plan_note(doc) for doc in page)


def check_word_count(doc: Joined) -> Verdict | None:
    if doc.live is None or "wordCount" not in doc.live or type(doc.live.get("text")) is not str:
        return None
    return verdict(doc.live["wordCount"] == len(doc.live["text"].split()), doc)


TOY = Migration(
    id="900_word_count",
    title="word count",
    predecessor=None,
    tables=("notes",),
    owned_fields={"notes": frozenset({"wordCount"})},
    changing_actions=frozenset({"count"}),
    actions=("count", "no_change", "problem"),
    planner=planner,
    checks=(DocumentCheck("word_count_right", "wordCount = the number of words of text", check_word_count),),
    labels={"notes": "notes"},
    derived_from={"notes": {"wordCount": ("text",)}},
    status_key="status",
)
