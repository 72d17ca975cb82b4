"""Migration 001's planner: the cross-document passes around the pure rules.

A scene's session must exist, an asset already tracked gets no second reference, an S3 key two scenes share
blocks them all, and a session's totals count its scenes' assets as they will be after apply. What spans
documents lives in scratch tables (the core's SQLite scratch store), looked up one page at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ... import jsonio
from ...migration import PlanInputs, reference_key
from ...scratch import ScratchTable, batched
from . import plan_line, rules
from .fields import ASSET_TYPES


def plan(inputs: PlanInputs) -> Iterator[dict[str, Any]]:
    """Every scene, then every session, as plan lines."""
    scratch, pages, page_size = inputs.scratch, inputs.pages, inputs.page_size
    bucket_base_url = inputs.options.get("bucket_base_url")
    sessions = scratch.table("sessions")  # id -> the session document, in the order read
    for page in pages("videoSessions", "sessions"):
        sessions.put((doc["_id"], doc) for doc in page)
    # Assets already tracked (a reference of any origin): the plan adds references only for the others.
    tracked = scratch.table("tracked")
    for page in pages("assetReferences", "asset references"):
        tracked.put((reference_key(ref["entityId"], ref["assetType"]), None) for ref in page)
    any_tracked = tracked if len(tracked) else None  # None on the usual first run: no page needs the look-up

    # Pass 1: plan scenes provisionally and record each S3 key's uses (a key shared by scenes blocks them all).
    # Keyed by the S3 key itself: keys of consecutive scenes are usually neighbours in SQLite's index.
    provisional = scratch.path("scenes.provisional.jsonl")
    key_uses = scratch.table("key_uses", multi=True)
    with provisional.open("wb") as sink:
        for page in pages("scenes", "scenes"):
            ctx = _page_context(page, bucket_base_url, sessions, any_tracked)
            plans = [rules.plan_scene(doc, ctx) for doc in page]
            for doc, planned in zip(page, plans, strict=True):
                planned.untracked = rules.untracked_assets("scenes", doc, ctx)
            key_uses.put((key, None) for plan in plans for key in rules.asset_keys(plan))
            sink.writelines(jsonio.dumps(plan.to_line()) + b"\n" for plan in plans)

    # Pass 2 (local file): settle duplicates, total each session's scene assets, yield the final scene lines.
    session_totals = scratch.table("session_totals")
    for page in batched(_read_plans(provisional), page_size):
        keys = [rules.asset_keys(plan) for plan in page]
        uses = key_uses.counts(key for plan_keys in keys for key in plan_keys)
        running = session_totals.get(plan.session_id for plan in page if plan.session_id is not None)
        for plan, plan_keys in zip(page, keys, strict=True):
            shared = [key for key in plan_keys if uses[key] > 1]
            if shared:
                plan = plan_line.mark_blocking(
                    plan,
                    "duplicate_s3_key",
                    f"S3 key {shared[0]!r} is used by {uses[shared[0]]} scenes; "
                    "decide which scene owns it before migrating any of them",
                )
            if plan.session_id is not None:
                running.setdefault(plan.session_id, rules.SessionTotals()).add_scene(plan)
            yield plan.to_line()
        session_totals.put(running.items())
    # Pass 3: sessions, with totals computed from their scenes' planned assets and their own.
    for page in batched((doc for _, doc in sessions.items()), page_size):
        ctx = _page_context(page, bucket_base_url, sessions, any_tracked)
        found = session_totals.get(doc["_id"] for doc in page)
        for doc in page:
            planned = rules.plan_session(doc, found.get(doc["_id"], rules.SessionTotals()), ctx)
            planned.untracked = rules.untracked_assets("videoSessions", doc, ctx)
            yield planned.to_line()


def _read_plans(path: Path) -> Iterator[rules.DocumentPlan]:
    with path.open("rb") as source:
        for raw in source:
            yield rules.DocumentPlan.from_line(jsonio.loads(raw))


def _page_context(
    page: list[dict[str, Any]], bucket_base_url: str | None, sessions: ScratchTable, tracked: ScratchTable | None
) -> rules.RulesContext:
    """What the rules may ask about one page of documents, looked up in two queries: which sessions its scenes
    name exist, and which of its assets already have a reference (none when `tracked` is None: no reference
    exists, so no key is computed or looked up)."""
    named = {doc["sessionId"] for doc in page if type(doc.get("sessionId")) is str}
    existing = sessions.has(named) if named else set()
    held = tracked.has(reference_key(doc["_id"], asset_type) for doc in page for asset_type in ASSET_TYPES.values()) if tracked is not None else set()
    if not held:
        return rules.RulesContext(bucket_base_url=bucket_base_url, session_exists=existing.__contains__)
    return rules.RulesContext(
        bucket_base_url=bucket_base_url,
        session_exists=existing.__contains__,
        is_tracked=lambda entity_id, asset_type: reference_key(entity_id, asset_type) in held,
    )
