// The migration's internal functions: paged reads and one guarded, idempotent batch write.
// They know nothing of the conversion rules nor of any migration's tables: the runbook plans every change and
// sends it here as a compare-and-set item, so apply, rollback-strip and rollback-restore all run through
// applyBatch. A table is any table of the deployed schema (checked here, at run time), so a migration of a new
// table needs its schema fragment and nothing else; the rows a migration creates beside its documents ("side
// rows", helpers.steps.migration.SideRows) are described by the batch's `sideRows` argument.
import { v } from "convex/values";
import type { Value } from "convex/values";
import type { GenericId } from "convex/values";
import { internalMutation, internalQuery, type MutationCtx, type QueryCtx } from "./_generated/server";
import type { TableNames } from "./_generated/dataModel";
import schema from "./schema";
import { chain, chainBroken, chainProblem, otherHolder, ownLock } from "./migrationRuns";
import { valuesEqual } from "./values";

/** A table of the deployed schema, or a clear refusal naming the known ones. */
function schemaTable(table: string): TableNames {
  if (!Object.prototype.hasOwnProperty.call(schema.tables, table)) {
    throw new Error(`no table ${table} in the deployed schema (known: ${Object.keys(schema.tables).join(", ")})`);
  }
  return table as TableNames;
}

/** Where a migration's side rows live and which of their fields are whose (helpers.steps.migration.SideRows.protocol). */
const sideRows = v.object({
  table: v.string(),
  owner: v.string(),
  kind: v.string(),
  index: v.string(),
  group: v.string(),
  stamp: v.string(),
  createdAt: v.string(),
});
type SideRows = typeof sideRows.type;
type Row = Record<string, Value | undefined>;

/** One page of a table in creation order; the runbook streams whole tables with it. */
export const readPage = internalQuery({
  args: { table: v.string(), cursor: v.union(v.string(), v.null()), numItems: v.number() },
  handler: async (ctx, { table, cursor, numItems }) => {
    return await ctx.db.query(schemaTable(table)).paginate({ cursor, numItems });
  },
});

/** Whether a side row carries this migration's stamp (and this run's, when given). */
function stamped(row: Row, side: SideRows, migrationId: string, runId?: string): boolean {
  const stamp = row[side.stamp] as Record<string, Value> | undefined;
  return stamp?.migrationId === migrationId && (runId === undefined || stamp?.runId === runId);
}

/**
 * How many side rows one run created, per value of their `group` field, over one page of their table: apply
 * confirms its statistics with the deployment's own count, without sending every row over the wire.
 */
export const countSideRows = internalQuery({
  args: { sideRows, migrationId: v.string(), runId: v.string(), cursor: v.union(v.string(), v.null()), numItems: v.number() },
  handler: async (ctx, { sideRows: side, migrationId, runId, cursor, numItems }) => {
    const { page, isDone, continueCursor } = await ctx.db.query(schemaTable(side.table)).paginate({ cursor, numItems });
    const counts: Record<string, number> = {};
    for (const row of page as Row[]) {
      const group = String(row[side.group]);
      if (stamped(row, side, migrationId, runId)) counts[group] = (counts[group] ?? 0) + 1;
    }
    return { counts, isDone, continueCursor };
  },
});

const item = v.object({
  table: v.string(),
  id: v.string(),
  expect: v.record(v.string(), v.any()),
  expectAbsent: v.array(v.string()),
  set: v.record(v.string(), v.any()),
  unset: v.array(v.string()),
  // Side rows to insert (without owner, createdAt and stamp ids: filled here) and side row ids to delete.
  insertReferences: v.array(v.record(v.string(), v.any())),
  deleteReferences: v.array(v.string()),
});

type Outcome = "applied" | "already_applied" | "conflict" | "error";
type Result = { id: string; outcome: Outcome; message?: string; referenceIds?: string[] };
type Item = typeof item.type;

const SYSTEM_FIELDS = new Set(["_id", "_creationTime"]);
/** The start of applyBatch's refusal when another run holds the lock (helpers.connection.calls recognises it). */
export const LOCK_HELD_BY_OTHER = "the migration lock is held by run";
/** The start of applyBatch's refusal of a guarded batch whose run does not hold the lock (helpers.connection.calls too). */
export const LOCK_NOT_HELD = "the deployment lock is not held by run";

/**
 * Applies each item atomically with its side rows, in the batch's one transaction.
 * Idempotency and preconditions are decided from the document itself (one db.get), never by an index
 * query per document: a document in its target state already has its side rows, because both were
 * written together, so nothing is ever inserted twice. The one exception is a reference-only item (it tracks
 * what the document held before the migration): it looks its side rows up by owner and kind.
 *
 * `guard` (the runbook's apply and rollback always send it) makes the batch's transaction check what the run
 * checked when it took the lock: the deployment lock is this run's with a lease that has not run out, and the
 * migration chain still holds (`migrationRuns.chainProblem`). A check made earlier and the write it guards can
 * thus never be separated: otherwise nothing is written and the batch throws (a chain problem as ConvexError data).
 */
export const applyBatch = internalMutation({
  args: { migrationId: v.string(), runId: v.string(), items: v.array(item), sideRows: v.optional(sideRows), guard: v.optional(chain) },
  handler: async (ctx, { migrationId, runId, items, sideRows: side, guard }) => {
    // A run whose lease ran out while a request of its was on its way (a retry, a paused process) must not
    // write beside the run that took the lock over: the deployment refuses it, not only the client.
    const now = Date.now();
    const holder = await otherHolder(ctx, runId, now);
    if (holder !== null) {
      throw new Error(`${LOCK_HELD_BY_OTHER} ${holder.runId} (${holder.operator}, migration ${holder.migrationId}): run ${runId} may not write`);
    }
    if (guard !== undefined) {
      if ((await ownLock(ctx, runId, now)) === null) {
        throw new Error(`${LOCK_NOT_HELD} ${runId} (released, or its lease ran out): it may not write`);
      }
      const problem = await chainProblem(ctx, guard);
      if (problem !== null) throw chainBroken(problem);
    }
    const results: Result[] = [];
    for (const it of items) {
      results.push(await applyItem(ctx, migrationId, runId, it, side));
    }
    return { results };
  },
});

async function applyItem(ctx: MutationCtx, migrationId: string, runId: string, it: Item, side?: SideRows): Promise<Result> {
  const touched = [...Object.keys(it.set), ...it.unset];
  const forbidden = touched.filter((f) => SYSTEM_FIELDS.has(f));
  if (forbidden.length > 0) {
    return { id: it.id, outcome: "error", message: `system fields cannot be changed: ${forbidden.join(", ")}` };
  }
  const id = ctx.db.normalizeId(schemaTable(it.table), it.id);
  if (id === null) {
    return { id: it.id, outcome: "error", message: `not an id of table ${it.table}` };
  }
  if (side === undefined && (it.insertReferences.length > 0 || it.deleteReferences.length > 0)) {
    return { id: it.id, outcome: "error", message: "side rows to write, but the batch declares no sideRows" };
  }
  const doc = (await ctx.db.get(id)) as Row | null;
  if (doc === null) {
    return { id: it.id, outcome: "conflict", message: "document no longer exists" };
  }

  const referencesToDelete: GenericId<TableNames>[] = [];
  for (const refId of it.deleteReferences) {
    const normalized = ctx.db.normalizeId(schemaTable(side!.table), refId);
    if (normalized === null) {
      return { id: it.id, outcome: "error", message: `not an id of table ${side!.table}: ${refId}` };
    }
    const ref = (await ctx.db.get(normalized)) as Row | null;
    if (ref === null) continue;
    if (!stamped(ref, side!, migrationId) || ref[side!.owner] !== id) {
      return { id: it.id, outcome: "conflict", message: `${side!.table} row ${refId} was not created by ${migrationId} for this document` };
    }
    referencesToDelete.push(normalized);
  }

  if (isReferenceOnly(it)) {
    return await trackExisting(ctx, migrationId, runId, id, doc, it, side!);
  }

  const inTarget =
    Object.entries(it.set).every(([field, value]) => valuesEqual(doc[field], value)) &&
    it.unset.every((field) => doc[field] === undefined) &&
    referencesToDelete.length === 0;
  if (inTarget) {
    return { id: it.id, outcome: "already_applied" };
  }

  const conflict = preconditionConflict(doc, it);
  if (conflict !== null) return conflict;

  const patch: Record<string, Value | undefined> = { ...it.set };
  for (const field of it.unset) patch[field] = undefined;
  await ctx.db.patch(id, patch);

  const referenceIds = side === undefined ? [] : await insertReferences(ctx, migrationId, runId, id, it.insertReferences, side);
  for (const refId of referencesToDelete) {
    await ctx.db.delete(refId);
  }
  return { id: it.id, outcome: "applied", ...(referenceIds.length > 0 ? { referenceIds } : {}) };
}

/** An item that writes no field and only adds side rows: it tracks what the document already held. */
function isReferenceOnly(it: Item): boolean {
  return (
    Object.keys(it.set).length === 0 && it.unset.length === 0 && it.deleteReferences.length === 0 && it.insertReferences.length > 0
  );
}

/**
 * A reference-only item's target state ("a side row of each kind exists") is not visible on the document, so
 * here, and only here, each row is looked up by owner and kind: one indexed query per row of the rare documents
 * that held what the migration tracks before it ran. A kind that already has any row is left alone.
 */
async function trackExisting(
  ctx: MutationCtx, migrationId: string, runId: string, id: GenericId<TableNames>, doc: Row, it: Item, side: SideRows,
): Promise<Result> {
  const missing: Item["insertReferences"] = [];
  for (const ref of it.insertReferences) {
    if ((await ownRow(ctx, side, id, ref[side.kind])) === null) missing.push(ref);
  }
  if (missing.length === 0) {
    return { id: it.id, outcome: "already_applied" };
  }
  const conflict = preconditionConflict(doc, it);
  if (conflict !== null) return conflict;
  const referenceIds = await insertReferences(ctx, migrationId, runId, id, missing, side);
  return { id: it.id, outcome: "applied", referenceIds };
}

/** The side row of one owner and kind, of any origin, through the side table's (owner, kind) index. */
async function ownRow(ctx: QueryCtx, side: SideRows, owner: string, kind: unknown): Promise<unknown> {
  // The side table is named at run time, so its index is too: Convex's typed index builder cannot see them.
  const query = ctx.db.query(schemaTable(side.table)) as any;
  return await query.withIndex(side.index, (q: any) => q.eq(side.owner, owner).eq(side.kind, kind)).first();
}

function preconditionConflict(doc: Record<string, Value | undefined>, it: Item): Result | null {
  const changed = [
    ...Object.entries(it.expect)
      .filter(([field, value]) => !valuesEqual(doc[field], value))
      .map(([field]) => `${field} changed`),
    ...it.expectAbsent.filter((field) => doc[field] !== undefined).map((field) => `${field} present`),
  ];
  return changed.length > 0 ? { id: it.id, outcome: "conflict", message: `changed since the plan: ${changed.join(", ")}` } : null;
}

async function insertReferences(
  ctx: MutationCtx, migrationId: string, runId: string, id: GenericId<TableNames>, references: Item["insertReferences"],
  side: SideRows,
): Promise<string[]> {
  const createdAt = Date.now();
  const referenceIds: string[] = [];
  for (const ref of references) {
    const stamp = { ...(ref[side.stamp] as Record<string, Value> | undefined), migrationId, runId };
    const row = { ...ref, [side.owner]: id, [side.createdAt]: createdAt, [side.stamp]: stamp };
    referenceIds.push(await ctx.db.insert(schemaTable(side.table), row as any));
  }
  return referenceIds;
}
