// The migration's internal functions: paged reads and one guarded, idempotent batch write.
// They know nothing of the conversion rules: the runbook plans every change and sends it here as a
// compare-and-set item, so apply, rollback-strip and rollback-restore all run through applyBatch.
import { v } from "convex/values";
import type { Value } from "convex/values";
import type { GenericId } from "convex/values";
import { internalMutation, internalQuery, type MutationCtx } from "./_generated/server";
import { assetType, entityType, s3AssetFields } from "./assets";
import { chain, chainBroken, chainProblem, otherHolder, ownLock } from "./migrationRuns";
import { valuesEqual } from "./values";

const table = v.union(
  v.literal("scenes"),
  v.literal("videoSessions"),
  v.literal("assetReferences"),
  v.literal("migrationRuns"),
);

/** One page of a table in creation order; the runbook streams whole tables with it. */
export const readPage = internalQuery({
  args: { table, cursor: v.union(v.string(), v.null()), numItems: v.number() },
  handler: async (ctx, { table, cursor, numItems }) => {
    return await ctx.db.query(table).paginate({ cursor, numItems });
  },
});

/**
 * How many asset references one run created, per entity type, over one page of the references table: apply
 * confirms its statistics with the deployment's own count, without sending every reference over the wire.
 */
export const countRunReferences = internalQuery({
  args: { migrationId: v.string(), runId: v.string(), cursor: v.union(v.string(), v.null()), numItems: v.number() },
  handler: async (ctx, { migrationId, runId, cursor, numItems }) => {
    const { page, isDone, continueCursor } = await ctx.db.query("assetReferences").paginate({ cursor, numItems });
    const counts: Record<string, number> = {};
    for (const { entityType, metadata } of page) {
      if (metadata.migrationId === migrationId && metadata.runId === runId) counts[entityType] = (counts[entityType] ?? 0) + 1;
    }
    return { counts, isDone, continueCursor };
  },
});

const referenceInput = v.object({
  entityType,
  assetType,
  ...s3AssetFields,
  version: v.number(),
  legacyField: v.optional(v.string()),
});

const item = v.object({
  table: v.union(v.literal("scenes"), v.literal("videoSessions")),
  id: v.string(),
  expect: v.record(v.string(), v.any()),
  expectAbsent: v.array(v.string()),
  set: v.record(v.string(), v.any()),
  unset: v.array(v.string()),
  insertReferences: v.array(referenceInput),
  deleteReferences: v.array(v.string()),
});

type Outcome = "applied" | "already_applied" | "conflict" | "error";
type Result = { id: string; outcome: Outcome; message?: string; referenceIds?: string[] };
type Item = typeof item.type;

const SYSTEM_FIELDS = new Set(["_id", "_creationTime"]);
/** The start of applyBatch's refusal when another run holds the lock (helpers.deployment recognises it). */
export const LOCK_HELD_BY_OTHER = "the migration lock is held by run";
/** The start of applyBatch's refusal of a guarded batch whose run does not hold the lock (helpers.deployment too). */
export const LOCK_NOT_HELD = "the deployment lock is not held by run";

/**
 * Applies each item atomically with its references, in the batch's one transaction.
 * Idempotency and preconditions are decided from the document itself (one db.get), never by an index
 * query per document: a document in its target state already has its references, because both were
 * written together, so nothing is ever inserted twice. The one exception is a reference-only item (it tracks
 * assets the document held before the migration): it looks its references up by entity.
 *
 * `guard` (the runbook's apply and rollback always send it) makes the batch's transaction check what the run
 * checked when it took the lock: the deployment lock is this run's with a lease that has not run out, and the
 * migration chain still holds (`migrationRuns.chainProblem`). A check made earlier and the write it guards can
 * thus never be separated: otherwise nothing is written and the batch throws (a chain problem as ConvexError data).
 */
export const applyBatch = internalMutation({
  args: { migrationId: v.string(), runId: v.string(), items: v.array(item), guard: v.optional(chain) },
  handler: async (ctx, { migrationId, runId, items, guard }) => {
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
      results.push(await applyItem(ctx, migrationId, runId, it));
    }
    return { results };
  },
});

async function applyItem(ctx: MutationCtx, migrationId: string, runId: string, it: Item): Promise<Result> {
  const touched = [...Object.keys(it.set), ...it.unset];
  const forbidden = touched.filter((f) => SYSTEM_FIELDS.has(f));
  if (forbidden.length > 0) {
    return { id: it.id, outcome: "error", message: `system fields cannot be changed: ${forbidden.join(", ")}` };
  }
  const id = ctx.db.normalizeId(it.table, it.id);
  if (id === null) {
    return { id: it.id, outcome: "error", message: `not an id of table ${it.table}` };
  }
  const doc = (await ctx.db.get(id)) as Record<string, Value | undefined> | null;
  if (doc === null) {
    return { id: it.id, outcome: "conflict", message: "document no longer exists" };
  }

  const referencesToDelete: GenericId<"assetReferences">[] = [];
  for (const refId of it.deleteReferences) {
    const normalized = ctx.db.normalizeId("assetReferences", refId);
    if (normalized === null) {
      return { id: it.id, outcome: "error", message: `not an assetReferences id: ${refId}` };
    }
    const ref = await ctx.db.get(normalized);
    if (ref === null) continue;
    if (ref.metadata.migrationId !== migrationId || ref.entityId !== id) {
      return { id: it.id, outcome: "conflict", message: `asset reference ${refId} was not created by ${migrationId} for this document` };
    }
    referencesToDelete.push(normalized);
  }

  if (isReferenceOnly(it)) {
    return await trackExistingAssets(ctx, migrationId, runId, id, doc, it);
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

  const referenceIds = await insertReferences(ctx, migrationId, runId, id, it.insertReferences);
  for (const refId of referencesToDelete) {
    await ctx.db.delete(refId);
  }
  return { id: it.id, outcome: "applied", ...(referenceIds.length > 0 ? { referenceIds } : {}) };
}

/** An item that writes no field and only adds references: it tracks assets the document already holds. */
function isReferenceOnly(it: Item): boolean {
  return (
    Object.keys(it.set).length === 0 && it.unset.length === 0 && it.deleteReferences.length === 0 && it.insertReferences.length > 0
  );
}

/**
 * A reference-only item's target state ("a reference of each type exists") is not visible on the document,
 * so here, and only here, each reference is looked up by entity: one indexed query per reference of the rare
 * documents that held assets before the migration. A type that already has any reference is left alone.
 */
async function trackExistingAssets(
  ctx: MutationCtx, migrationId: string, runId: string, id: GenericId<"scenes"> | GenericId<"videoSessions">,
  doc: Record<string, Value | undefined>, it: Item,
): Promise<Result> {
  const missing: Item["insertReferences"] = [];
  for (const ref of it.insertReferences) {
    const existing = await ctx.db
      .query("assetReferences")
      .withIndex("by_entity", (q) => q.eq("entityId", id).eq("assetType", ref.assetType))
      .first();
    if (existing === null) missing.push(ref);
  }
  if (missing.length === 0) {
    return { id: it.id, outcome: "already_applied" };
  }
  const conflict = preconditionConflict(doc, it);
  if (conflict !== null) return conflict;
  const referenceIds = await insertReferences(ctx, migrationId, runId, id, missing);
  return { id: it.id, outcome: "applied", referenceIds };
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
  ctx: MutationCtx, migrationId: string, runId: string, id: GenericId<"scenes"> | GenericId<"videoSessions">,
  references: Item["insertReferences"],
): Promise<string[]> {
  const createdAt = Date.now();
  const referenceIds: string[] = [];
  for (const { legacyField, ...ref } of references) {
    const metadata = { migratedFromLegacy: true, migrationId, runId, ...(legacyField ? { legacyField } : {}) };
    referenceIds.push(await ctx.db.insert("assetReferences", { ...ref, entityId: id, createdAt, metadata }));
  }
  return referenceIds;
}
