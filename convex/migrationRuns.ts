// The runbook's ledger of runs and its lease-based lock: one "lock" row per migration, held by one run id
// until released or until its lease expires (a killed apply frees the lock by itself).
import { v } from "convex/values";
import { internalMutation, internalQuery, type MutationCtx } from "./_generated/server";

async function currentLock(ctx: MutationCtx, migrationId: string) {
  return await ctx.db
    .query("migrationRuns")
    .withIndex("by_migration", (q) => q.eq("migrationId", migrationId).eq("kind", "lock"))
    .first();
}

/** Takes the lock, or tells who holds it. The same run id may take it again (a resumed run). */
export const acquireLock = internalMutation({
  args: { migrationId: v.string(), runId: v.string(), operator: v.string(), leaseMs: v.number() },
  handler: async (ctx, { migrationId, runId, operator, leaseMs }) => {
    const now = Date.now();
    const expiresAt = now + leaseMs;
    const lock = await currentLock(ctx, migrationId);
    if (lock === null) {
      await ctx.db.insert("migrationRuns", { kind: "lock", migrationId, runId, operator, startedAt: now, leaseExpiresAt: expiresAt });
      return { acquired: true, expiresAt };
    }
    if (lock.runId === runId || (lock.leaseExpiresAt ?? 0) <= now) {
      await ctx.db.patch(lock._id, { runId, operator, startedAt: now, leaseExpiresAt: expiresAt });
      return { acquired: true, expiresAt };
    }
    return {
      acquired: false,
      holder: { runId: lock.runId, operator: lock.operator, expiresAt: lock.leaseExpiresAt ?? 0 },
    };
  },
});

export const renewLock = internalMutation({
  args: { migrationId: v.string(), runId: v.string(), leaseMs: v.number() },
  handler: async (ctx, { migrationId, runId, leaseMs }) => {
    const lock = await currentLock(ctx, migrationId);
    if (lock === null || lock.runId !== runId) return { renewed: false };
    const expiresAt = Date.now() + leaseMs;
    await ctx.db.patch(lock._id, { leaseExpiresAt: expiresAt });
    return { renewed: true, expiresAt };
  },
});

export const releaseLock = internalMutation({
  args: { migrationId: v.string(), runId: v.string() },
  handler: async (ctx, { migrationId, runId }) => {
    const lock = await currentLock(ctx, migrationId);
    if (lock === null || lock.runId !== runId) return { released: false };
    await ctx.db.delete(lock._id);
    return { released: true };
  },
});

/** Upserts the ledger row of one step of one run. The row keeps the step's first start: a resumed or
 * re-checked apply is still the apply that began then (apply's stale-plan check reads it). */
export const record = internalMutation({
  args: {
    migrationId: v.string(),
    runId: v.string(),
    step: v.string(),
    status: v.string(),
    operator: v.string(),
    startedAt: v.number(),
    finishedAt: v.optional(v.number()),
    counts: v.optional(v.record(v.string(), v.number())),
    details: v.optional(v.string()),
    evidence: v.optional(v.record(v.string(), v.string())),
  },
  handler: async (ctx, args) => {
    const rows = await ctx.db
      .query("migrationRuns")
      .withIndex("by_migration", (q) => q.eq("migrationId", args.migrationId).eq("kind", "run").eq("runId", args.runId))
      .collect();
    const existing = rows.find((row) => row.step === args.step);
    if (existing) {
      await ctx.db.patch(existing._id, { ...args, startedAt: Math.min(existing.startedAt, args.startedAt) });
    } else {
      await ctx.db.insert("migrationRuns", { kind: "run", ...args });
    }
    return null;
  },
});

/** Every ledger row of a migration (one per run and step), oldest first: the evidence anchor and the record
 * of who applied what, read by `check-archive --url` and by apply's stale-plan check. */
export const ledger = internalQuery({
  args: { migrationId: v.string() },
  handler: async (ctx, { migrationId }) => {
    return await ctx.db
      .query("migrationRuns")
      .withIndex("by_migration", (q) => q.eq("migrationId", migrationId).eq("kind", "run"))
      .collect();
  },
});
