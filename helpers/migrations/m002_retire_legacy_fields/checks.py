"""Migration 002's own verify check: no value it removed is lost.

The core's checks prove the plan was written and nothing else changed (the asset fields included: 002 does not
own them). This one proves what the core cannot know: that every legacy value a retired document lost is still
held by the asset that carried it when it was planned (the planner's rule, `rules.not_carried`, asked again of
the live document). The backup holds every removed value too; rollback *restore* puts them back from there.
"""

from __future__ import annotations

from helpers.migrations.m002_retire_legacy_fields.rules import RETIRE, not_carried
from helpers.steps.migration import DocumentCheck, Joined, Verdict, verdict


def _lost(doc: Joined) -> dict[str, list[str]]:
    """Per asset field, the removed legacy fields (absent now) whose planned value it no longer carries."""
    assert doc.plan is not None and doc.live is not None
    live = doc.live
    gone = {name: value for name, value in doc.plan.removed.items() if name not in live}  # a field still there lost nothing
    return not_carried(doc.table, gone, live)


def _run(doc: Joined) -> Verdict | None:
    if doc.plan is None or doc.plan.action != RETIRE or doc.live is None:
        return None  # not retired by this plan; a deleted document is the core's `nothing_missing`
    return verdict(not _lost(doc), doc)


def _detail(doc: Joined) -> str:
    return "; ".join(f"{asset} no longer carries {', '.join(names)}" for asset, names in _lost(doc).items())


LEGACY_VALUES_RECOVERABLE = DocumentCheck(
    name="legacy_values_recoverable",
    description="every legacy value a retired document lost is held, exactly, by the live asset field that carried it",
    run=_run,
    detail=_detail,
)
