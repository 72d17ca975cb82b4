"""Migration 001's planner: the cross-document passes around the pure rules.

A scene's session must exist, an asset already tracked gets no second reference, an S3 key two scenes share
blocks them all, and a session's totals count its scenes' assets as they will be after apply. What spans
documents lives in scratch tables (the core's SQLite scratch store), looked up one page at a time. The scenes'
rules run in worker processes over ranges of the snapshot (`PlanInputs.map_pages`); everything that spans scenes
(key uses, session totals) is settled here, in scene order, so the plan is the same for any number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, NamedTuple

from helpers.connection import jsonio
from helpers.migrations.m001_s3_asset_tracking import plan_line, rules
from helpers.migrations.m001_s3_asset_tracking.fields import ASSET_TYPES
from helpers.steps.migration import PlanInputs, PlanLine, reference_key
from helpers.steps.scratch import ScratchCounter, ScratchTable, batched

#: S3 keys that several scenes share, kept in memory for pass 2 up to this many (~100 bytes each); past it, each
#: page's keys are looked up in the scratch counter.
SHARED_KEYS_IN_MEMORY = 100_000


def plan(inputs: PlanInputs) -> Iterator[dict[str, Any] | PlanLine]:
    """Every scene, then every session, as plan lines."""
    assert inputs.map_pages is not None, "the dry-run (helpers.steps.plan.build_plan) gives every planner map_pages"
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

    # Pass 1, in worker processes over ranges of the scenes (the rules' cost): plan each scene provisionally, encoded,
    # with its S3 keys and what it adds to its session's totals; each worker counts its keys' uses (a key shared by
    # scenes blocks them all) in a counter keyed by the S3 key itself (keys of consecutive scenes are neighbours there).
    key_uses = scratch.counter("key_uses")
    scenes = inputs.map_pages("scenes", "scenes", partial(_plan_scenes, bucket_base_url, sessions, any_tracked, key_uses))

    # Pass 2, over the workers' results in scene order: settle duplicates, total each session's scene assets, yield the
    # final scene lines (only a blocked scene is decoded again).
    session_totals = scratch.table("session_totals")
    shared_keys = key_uses.above(1, limit=SHARED_KEYS_IN_MEMORY)  # usually a handful: no look-up per page
    for page in scenes:
        uses = shared_keys if shared_keys is not None else key_uses.counts(key for scene in page for key in scene.keys)
        running = session_totals.get(scene.session_id for scene in page if scene.session_id is not None)
        for scene in page:
            line, contribution = scene.line, scene.contribution
            shared = [key for key in scene.keys if uses.get(key, 1) > 1]
            if shared:
                plan = plan_line.mark_blocking(
                    rules.DocumentPlan.from_line(jsonio.loads(line.raw)),
                    "duplicate_s3_key",
                    f"S3 key {shared[0]!r} is used by {uses[shared[0]]} scenes; "
                    "decide which scene owns it before migrating any of them",
                )
                line, contribution = _encode(plan.to_line()), plan_line.scene_contribution(plan)
            if scene.session_id is not None:
                running.setdefault(scene.session_id, rules.SessionTotals()).add(*contribution)
            yield line
        session_totals.put(running.items())
    scenes.discard()
    # Pass 3: sessions, with totals computed from their scenes' planned assets and their own.
    for page in batched((doc for _, doc in sessions.items()), page_size):
        ctx = _page_context(page, bucket_base_url, sessions, any_tracked)
        found = session_totals.get(doc["_id"] for doc in page)
        for doc in page:
            planned = rules.plan_session(doc, found.get(doc["_id"], rules.SessionTotals()), ctx)
            planned.untracked = rules.untracked_assets("videoSessions", doc, ctx)
            yield planned.to_line()


def _encode(line: dict[str, Any]) -> PlanLine:
    """A scene's line as the plan stores it, counted by its legacy status and its references' asset types (what
    001 declares as `status_key` and its side rows' `kind`)."""
    return PlanLine.of(line, plan_line.STATUS_KEY, plan_line.REFERENCE_KIND)


class _Scene(NamedTuple):
    """One scene planned by a worker: its encoded line, its S3 keys after apply, its session and its contribution."""

    line: PlanLine
    keys: list[str]
    session_id: str | None
    contribution: tuple[int, float, Any]


def _plan_scenes(
    bucket_base_url: str | None, sessions: ScratchTable, tracked: ScratchTable | None, key_uses: ScratchCounter, page: list[dict[str, Any]]
) -> list[_Scene]:
    """Pass 1 for one page of scenes (in a worker process: the scratch tables are read-only there, the counter not)."""
    ctx = _page_context(page, bucket_base_url, sessions, tracked)
    plans = [rules.plan_scene(doc, ctx) for doc in page]
    for doc, planned in zip(page, plans, strict=True):
        planned.untracked = rules.untracked_assets("scenes", doc, ctx)
    scenes = [_Scene(_encode(plan.to_line()), rules.asset_keys(plan), plan.session_id, plan_line.scene_contribution(plan)) for plan in plans]
    key_uses.add(key for scene in scenes for key in scene.keys)
    return scenes


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
