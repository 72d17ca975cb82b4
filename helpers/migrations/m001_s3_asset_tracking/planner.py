"""Migration 001's planner: the cross-document passes around the pure rules.

A scene's session must exist, an asset already tracked gets no second reference, an S3 key two scenes share
blocks them all, and a session's totals count its scenes' assets as they will be after apply. What spans
documents lives in scratch tables (the core's SQLite scratch store), looked up one page at a time.

Nearly all the work runs in worker processes, a page at a time, each page handed back encoded and counted
(`PlanPage`): the scenes' rules over ranges of the snapshot (`PlanInputs.map_pages`), then the blocking of scenes that
share a key, once every range has counted its keys (`map_results`), then the sessions (`map_stored`). What this
process does is add up in scene order what spans pages (each session's totals, summed exactly), so the plan is the
same for any number of workers.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

from helpers.connection import jsonio
from helpers.migrations.m001_s3_asset_tracking import plan_line, rules
from helpers.migrations.m001_s3_asset_tracking.fields import ASSET_TYPES
from helpers.steps.migration import PlanInputs, PlanLine, reference_key
from helpers.steps.plan_tally import PlanPage, PlanTally, count_lines
from helpers.steps.scratch import ScratchCounter, ScratchTable

#: S3 keys that several scenes share, kept in memory for pass 2 up to this many (~100 bytes each); past it, each
#: page's keys are looked up in the scratch counter.
SHARED_KEYS_IN_MEMORY = 100_000


def plan(inputs: PlanInputs) -> Iterator[dict[str, Any] | PlanLine | PlanPage]:
    """Every scene, then every session, as pages of plan lines."""
    assert inputs.map_pages and inputs.map_stored and inputs.map_results, "the dry-run (helpers.steps.plan.build_plan) gives every planner all three"
    scratch, pages = inputs.scratch, inputs.pages
    bucket_base_url = inputs.options.get("bucket_base_url")
    sessions = scratch.table("sessions")  # id -> the session document, in the order read
    for page in pages("videoSessions", "sessions"):
        sessions.put((doc["_id"], doc) for doc in page)
    # Assets already tracked (a reference of any origin): the plan adds references only for the others.
    tracked = scratch.table("tracked")
    for page in pages("assetReferences", "asset references"):
        tracked.put((reference_key(ref["entityId"], ref["assetType"]), None) for ref in page)
    any_tracked = tracked if len(tracked) else None  # None on the usual first run: no page needs the look-up

    # Pass 1, in worker processes over ranges of the scenes (the rules' cost): plan each scene provisionally, as a
    # page of encoded lines with its tally and what it adds to its sessions' totals; each worker counts its keys' uses (a
    # key shared by scenes blocks them all) in a counter keyed by the S3 key itself (keys of consecutive scenes are
    # neighbours there).
    key_uses = scratch.counter("key_uses")
    scenes = inputs.map_pages("scenes", "scenes", partial(_plan_scenes, bucket_base_url, sessions, any_tracked, key_uses))

    # Pass 2, in the workers again over the pages they wrote: a page none of whose keys another scene uses is final as
    # it is; in the others the scenes sharing a key are blocked (only they are decoded again), and the worker hands back
    # their new lines with the page's tally. Here, in scene order, the pages are yielded and each session's totals add up.
    shared_keys = key_uses.above(1, limit=SHARED_KEYS_IN_MEMORY)  # usually a handful: no look-up per page
    settled = inputs.map_results(scenes, "scenes sharing S3 keys", partial(_settle, _SharedKeys(shared_keys), key_uses))
    session_totals = scratch.table("session_totals")
    for page, blocked in zip(scenes, settled, strict=True):
        lines, totals = (page.lines, page.totals) if blocked is None else (blocked.page(page.lines.raw), blocked.totals)
        yield lines
        running = session_totals.get(totals)
        for session_id, part in totals.items():
            running.setdefault(session_id, rules.SessionTotals()).merge(part)
        session_totals.put(running.items())
    scenes.discard()
    settled.discard()
    # Pass 3, in worker processes over the sessions read in pass 0: their totals computed from their scenes' planned
    # assets and their own.
    planned_sessions = inputs.map_stored(sessions, "sessions", partial(_plan_sessions, bucket_base_url, sessions, any_tracked, session_totals))
    yield from planned_sessions
    planned_sessions.discard()


def _encode(line: dict[str, Any]) -> PlanLine:
    """A scene's line as the plan stores it, counted by its legacy status and its references' asset types (what
    001 declares as `status_key` and its side rows' `kind`)."""
    return PlanLine.of(line, plan_line.STATUS_KEY, plan_line.REFERENCE_KIND)


def _page_of(lines: list[PlanLine]) -> PlanPage:
    return PlanPage.of(lines, plan_line.CHANGING_ACTIONS)


class _Scene(NamedTuple):
    """One scene planned by a worker: its encoded line, its S3 keys after apply, its session and its contribution (in
    pass 2 its line's bytes are read from its page's only if it is blocked)."""

    line: PlanLine
    keys: list[str]
    session_id: str | None
    contribution: tuple[int, float, Any]


class _ScenePage(NamedTuple):
    """One page of scenes planned by a worker as if no other scene shared their keys: the page of lines, its sessions'
    totals, a digest per S3 key (to tell at once that no shared key is in it) and its scenes' fields but their lines'
    bytes, pickled (read only in a page that holds a shared key)."""

    lines: PlanPage
    totals: dict[str, rules.SessionTotals]
    key_digests: bytes
    scenes: bytes


def _plan_scenes(
    bucket_base_url: str | None, sessions: ScratchTable, tracked: ScratchTable | None, key_uses: ScratchCounter, page: list[dict[str, Any]]
) -> _ScenePage:
    """Pass 1 for one page of scenes (in a worker process: the scratch tables are read-only there, the counter not)."""
    ctx = _page_context(page, bucket_base_url, sessions, tracked)
    plans = [rules.plan_scene(doc, ctx) for doc in page]
    for doc, planned in zip(page, plans, strict=True):
        planned.untracked = rules.untracked_assets("scenes", doc, ctx)
    scenes = [_Scene(_encode(plan.to_line()), rules.asset_keys(plan), plan.session_id, plan_line.scene_contribution(plan)) for plan in plans]
    keys = [key for scene in scenes for key in scene.keys]
    key_uses.add(keys)
    return _ScenePage(
        _page_of([scene.line for scene in scenes]),
        _session_totals(scenes),
        b"".join(map(_key_digest, keys)),
        pickle.dumps([(tuple(scene.line)[1:], *scene[1:]) for scene in scenes], pickle.HIGHEST_PROTOCOL),  # plain tuples pickle fastest
    )


def _session_totals(scenes: Iterable[_Scene]) -> dict[str, rules.SessionTotals]:
    """What a page of scenes adds to each of their sessions' totals."""
    totals: dict[str, rules.SessionTotals] = {}
    for scene in scenes:
        if scene.session_id is not None:
            totals.setdefault(scene.session_id, rules.SessionTotals()).add(*scene.contribution)
    return totals


def _key_digest(key: str) -> bytes:
    """Eight bytes per S3 key, the same in every process (a collision only sends a page down the slow path)."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()


@dataclass(frozen=True)
class _SharedKeys:
    """The S3 keys several scenes use, with their counts and digests, while they are few enough for memory (None
    past SHARED_KEYS_IN_MEMORY: each page's keys are looked up in the counter then)."""

    uses: dict[Any, int] | None
    digests: frozenset[bytes] | None = None

    def __post_init__(self) -> None:
        if self.uses is not None:
            object.__setattr__(self, "digests", frozenset(_key_digest(str(key)) for key in self.uses))


class _Blocked(NamedTuple):
    """What pass 2 changes in a page of scenes some of which share a key: the new bytes of each blocked scene's line
    (with where its old ones are in the page's), the page's tally and problem rows, and its sessions' totals."""

    lines: list[tuple[int, int, bytes]]
    tally: PlanTally
    problem_rows: str
    totals: dict[str, rules.SessionTotals]

    def page(self, raw: bytes) -> PlanPage:
        """The page, its blocked lines' bytes put in place of their old ones."""
        view, at = memoryview(raw), 0
        pieces: list[bytes | memoryview] = []
        for start, stop, line in self.lines:
            pieces += [view[at:start], line]
            at = stop
        pieces.append(view[at:])
        return PlanPage(b"".join(pieces), self.problem_rows, self.tally)


def _settle(shared: _SharedKeys, key_uses: ScratchCounter, page: _ScenePage) -> _Blocked | None:
    """Pass 2 for one page of scenes (in a worker): None when no scene of it shares a key (the page is final as
    it is), else what blocking those scenes changes."""
    if shared.digests is not None and (not shared.digests or shared.digests.isdisjoint(_digests(page.key_digests))):
        return None
    fields = _fields_of(page)
    uses = shared.uses if shared.uses is not None else key_uses.counts(key for _, keys, _, _ in fields for key in keys)
    raw, scenes, blocked, start = page.lines.raw, [], [], 0
    for line, keys, session_id, contribution in fields:
        stop = raw.index(b"\n", start) + 1  # every line ends with one (JSON escapes the others)
        scene = _Scene(PlanLine(b"", *line), keys, session_id, contribution)  # its bytes are read only to block it
        if shared_here := [key for key in keys if uses.get(key, 1) > 1]:
            scene = _block(scene._replace(line=PlanLine(raw[start:stop], *line)), shared_here, uses)
            blocked.append((start, stop, scene.line.raw))
        scenes.append(scene)
        start = stop
    if not blocked:  # a digest collision: no key of this page is shared
        return None
    tally, problem_rows = count_lines([scene.line for scene in scenes], plan_line.CHANGING_ACTIONS)
    return _Blocked(blocked, tally, problem_rows, _session_totals(scenes))


def _fields_of(page: _ScenePage) -> list[tuple[tuple[Any, ...], list[str], str | None, tuple[int, float, Any]]]:
    """Per scene of a page: its line's fields but its bytes, its keys, its session and its contribution."""
    fields: list[tuple[tuple[Any, ...], list[str], str | None, tuple[int, float, Any]]] = pickle.loads(page.scenes)
    return fields


def _block(scene: _Scene, shared: list[str], uses: Mapping[Any, int]) -> _Scene:
    """The scene blocked: `shared` are its keys that other scenes use too."""
    plan = plan_line.mark_blocking(
        rules.DocumentPlan.from_line(jsonio.loads(scene.line.raw)),
        "duplicate_s3_key",
        f"S3 key {shared[0]!r} is used by {uses[shared[0]]} scenes; decide which scene owns it before migrating any of them",
    )
    return scene._replace(line=_encode(plan.to_line()), contribution=plan_line.scene_contribution(plan))


def _digests(joined: bytes) -> Iterator[bytes]:
    return (joined[i : i + 8] for i in range(0, len(joined), 8))


def _plan_sessions(
    bucket_base_url: str | None, sessions: ScratchTable, tracked: ScratchTable | None, session_totals: ScratchTable, page: list[dict[str, Any]]
) -> PlanPage:
    """Pass 3 for one page of sessions (in a worker process), with their scenes' totals from pass 2."""
    ctx = _page_context(page, bucket_base_url, sessions, tracked)
    found = session_totals.get(doc["_id"] for doc in page)
    lines = []
    for doc in page:
        planned = rules.plan_session(doc, found.get(doc["_id"], rules.SessionTotals()), ctx)
        planned.untracked = rules.untracked_assets("videoSessions", doc, ctx)
        lines.append(_encode(planned.to_line()))
    return _page_of(lines)


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
