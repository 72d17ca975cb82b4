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

/** The ledger row of a run's seal: it holds the manifest's sha256 (and every file the manifest lists). */
export const SEAL_STEP = "seal";
export const MANIFEST_FILE = "manifest.json";
/** The words a refused seal starts with (helpers/archive.py recognises them). */
export const SEAL_REFUSED = "the run is sealed already";

/** Appends to the ledger of one run; nothing recorded as evidence is ever rewritten.
 *
 * A step's row is written when the step starts (apply, rollback) and completed when it finishes; once it holds
 * evidence (the sha256 of what the step read and wrote) it is final, and the step run again gets a row of its
 * own. An unfinished row keeps the step's first start: a resumed apply is still the apply that began then
 * (apply's stale-plan check reads it).
 *
 * A seal is final too: the same manifest again is a no-op, another manifest is refused unless a step of the run
 * was recorded since the last seal (the run continued, so its folder changed). A folder edited and sealed again
 * therefore cannot re-anchor itself here, whoever calls this function. */
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
    const recordedAt = Date.now();
    if (args.step === SEAL_STEP) {
      const seals = rows.filter((row) => row.step === SEAL_STEP);
      const last = seals[seals.length - 1];
      if (last !== undefined) {
        const sealed = last.evidence?.[MANIFEST_FILE];
        if (sealed === args.evidence?.[MANIFEST_FILE]) return { recorded: false, unchanged: true };
        const lastAt = last.recordedAt ?? 0;
        if (!rows.some((row) => row.step !== SEAL_STEP && (row.recordedAt ?? 0) > lastAt)) {
          throw new Error(
            `${SEAL_REFUSED} with manifest sha256 ${sealed} and no step of run ${args.runId} was recorded since: ` +
              `a seal with manifest sha256 ${args.evidence?.[MANIFEST_FILE]} would rewrite it`,
          );
        }
      }
      await ctx.db.insert("migrationRuns", { kind: "run", ...args, recordedAt });
      return { recorded: true, unchanged: false };
    }
    const earlier = rows.filter((row) => row.step === args.step);
    const last = earlier[earlier.length - 1];
    if (last !== undefined && last.evidence === undefined) {
      await ctx.db.patch(last._id, { ...args, startedAt: Math.min(last.startedAt, args.startedAt), recordedAt });
    } else {
      await ctx.db.insert("migrationRuns", { kind: "run", ...args, recordedAt });
    }
    return { recorded: true, unchanged: false };
  },
});

/** Every ledger row of a migration (one per run and step attempt, and each seal), oldest first: the evidence
 * anchor and the record of who applied what, read by `check-archive --url`, `runbook status` and apply's
 * stale-plan check. */
export const ledger = internalQuery({
  args: { migrationId: v.string() },
  handler: async (ctx, { migrationId }) => {
    return await ctx.db
      .query("migrationRuns")
      .withIndex("by_migration", (q) => q.eq("migrationId", migrationId).eq("kind", "run"))
      .collect();
  },
});
