// The runbook's ledger of runs and its lease-based lock. The lock is one per deployment: whichever migration a
// run writes for (apply or rollback, of any migration), it holds the deployment's one "lock" row until it
// releases it or its lease expires (a killed run frees the lock by itself; the same run id may take it again).
// The migration chain's preconditions are decided here too, from the ledger rows, in the caller's transaction:
// `acquireLock` refuses a run the chain does not allow, and `migration:applyBatch` asks again before it writes.
import { ConvexError, v, type Infer } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import { internalMutation, internalQuery, type QueryCtx } from "./_generated/server";

// The runbook's step names the chain reads (helpers/runner.py STEPS): generic, never a migration's own names.
const APPLY_STEP = "03_apply";
const VERIFY_STEP = "04_verify";
const ROLLBACK_STEP = "05_rollback";

/**
 * What the chain requires of the deployment before a run writes, as migration ids (the runbook derives them
 * from its registry): `inEffect` must each have a passed verify that no executed rollback followed (a
 * predecessor an apply builds on); `notInEffect` must each have no apply that no passed restore followed (a
 * successor that builds on what a rollback would undo).
 */
export const chain = v.object({ inEffect: v.array(v.string()), notInEffect: v.array(v.string()) });
export type Chain = Infer<typeof chain>;

/** Why the chain does not hold, for the runbook to word (helpers/steps/chain.py). */
export type ChainProblem =
  | { reason: "not_verified"; migrationId: string }
  | { reason: "rolled_back"; migrationId: string; runId: string; status: string; verifiedRunId: string }
  | { reason: "in_effect"; migrationId: string; runId: string };

type Row = Doc<"migrationRuns">;

/** A rollback that sent its plan: execute_rollback records `details: "mode=<mode>"` before it sends anything;
 * a preview (execute=False) records the step without it, and changed nothing. */
function executedRollback(row: Row): boolean {
  return row.step === ROLLBACK_STEP && (row.details ?? "").startsWith("mode=");
}

/** The latest moment a row speaks of: a row keeps its step's first start, so an execution after a preview of
 * the same run folder shows in its finish. */
function lastMoment(row: Row): number {
  return Math.max(row.startedAt, row.finishedAt ?? 0);
}

async function runRows(ctx: QueryCtx, migrationId: string): Promise<Row[]> {
  return await ctx.db
    .query("migrationRuns")
    .withIndex("by_migration", (q) => q.eq("migrationId", migrationId).eq("kind", "run"))
    .collect();
}

/** The first way the ledger breaks the chain, or null when it holds. */
export async function chainProblem(ctx: QueryCtx, { inEffect, notInEffect }: Chain): Promise<ChainProblem | null> {
  for (const migrationId of inEffect) {
    const rows = await runRows(ctx, migrationId);
    const verified = rows.filter((row) => row.step === VERIFY_STEP && row.status === "passed");
    if (verified.length === 0) return { reason: "not_verified", migrationId };
    const last = verified.reduce((a, b) => (b.startedAt > a.startedAt ? b : a));
    // A rollback of any outcome counts once it was executed: a failed one may have changed documents back.
    const undone = rows.filter((row) => executedRollback(row) && lastMoment(row) > last.startedAt);
    if (undone.length > 0) {
      const by = undone[undone.length - 1]!;
      return { reason: "rolled_back", migrationId, runId: by.runId, status: by.status ?? "", verifiedRunId: last.runId };
    }
  }
  for (const migrationId of notInEffect) {
    const rows = await runRows(ctx, migrationId);
    const applies = rows.filter((row) => row.step === APPLY_STEP);
    if (applies.length === 0) continue;
    const applied = applies.reduce((a, b) => (b.startedAt > a.startedAt ? b : a));
    const restored = rows.some(
      (row) => executedRollback(row) && row.status === "passed" && row.details === "mode=restore" && row.startedAt > applied.startedAt,
    );
    if (!restored) return { reason: "in_effect", migrationId, runId: applied.runId };
  }
  return null;
}

/** Every lock row. One, since the lock is per deployment; a ledger written by an older runbook may still hold one
 * per migration: each is honoured while its lease runs, and taking the lock clears them. */
async function lockRows(ctx: QueryCtx): Promise<Row[]> {
  return await ctx.db
    .query("migrationRuns")
    .withIndex("by_kind", (q) => q.eq("kind", "lock"))
    .collect();
}

/** The lock row of another run whose lease has not run out: that run may be writing. */
export async function otherHolder(ctx: QueryCtx, runId: string, now: number): Promise<Row | null> {
  return (await lockRows(ctx)).find((row) => row.runId !== runId && (row.leaseExpiresAt ?? 0) > now) ?? null;
}

/** This run's own lock row with a lease that has not run out, or null: only such a run may write. */
export async function ownLock(ctx: QueryCtx, runId: string, now: number): Promise<Row | null> {
  return (await lockRows(ctx)).find((row) => row.runId === runId && (row.leaseExpiresAt ?? 0) > now) ?? null;
}

/** Takes the deployment's lock, or says who holds it (run, operator, the migration it writes for), or why the
 * chain does not allow this run to write. The same run id may take it again (a resumed run). */
export const acquireLock = internalMutation({
  args: { migrationId: v.string(), runId: v.string(), operator: v.string(), leaseMs: v.number(), chain },
  handler: async (ctx, { migrationId, runId, operator, leaseMs, chain }) => {
    const now = Date.now();
    const holder = await otherHolder(ctx, runId, now);
    if (holder !== null) {
      return {
        acquired: false,
        holder: { runId: holder.runId, operator: holder.operator, migrationId: holder.migrationId, expiresAt: holder.leaseExpiresAt ?? 0 },
      };
    }
    const problem = await chainProblem(ctx, chain);
    if (problem !== null) return { acquired: false, chain: problem };
    const [kept, ...stale] = await lockRows(ctx);
    for (const row of stale) await ctx.db.delete(row._id);
    const expiresAt = now + leaseMs;
    const lock = { kind: "lock" as const, migrationId, runId, operator, startedAt: now, leaseExpiresAt: expiresAt };
    if (kept === undefined) await ctx.db.insert("migrationRuns", lock);
    else await ctx.db.replace(kept._id, lock);
    return { acquired: true, expiresAt };
  },
});

export const renewLock = internalMutation({
  args: { runId: v.string(), leaseMs: v.number() },
  handler: async (ctx, { runId, leaseMs }) => {
    const lock = (await lockRows(ctx)).find((row) => row.runId === runId);
    if (lock === undefined) return { renewed: false };
    const expiresAt = Date.now() + leaseMs;
    await ctx.db.patch(lock._id, { leaseExpiresAt: expiresAt });
    return { renewed: true, expiresAt };
  },
});

export const releaseLock = internalMutation({
  args: { runId: v.string() },
  handler: async (ctx, { runId }) => {
    const lock = (await lockRows(ctx)).find((row) => row.runId === runId);
    if (lock === undefined) return { released: false };
    await ctx.db.delete(lock._id);
    return { released: true };
  },
});

/** Why the chain does not allow a write now, or null: the runbook's early, read-only check (before a backup,
 * a plan or a rollback plan); the check that counts is made again under the lock and inside applyBatch. */
export const chainState = internalQuery({
  args: { chain },
  handler: async (ctx, { chain }) => ({ problem: await chainProblem(ctx, chain) }),
});

/** Thrown by applyBatch when the chain no longer allows the write; `data` is the ChainProblem. */
export function chainBroken(problem: ChainProblem): ConvexError<{ code: "chain_broken"; problem: ChainProblem }> {
  return new ConvexError({ code: "chain_broken" as const, problem });
}

/** The ledger row of a run's seal: it holds the manifest's sha256 (and every file the manifest lists). */
export const SEAL_STEP = "seal";
export const MANIFEST_FILE = "manifest.json";
/** The words a refused seal starts with (helpers/evidence/archive.py recognises them). */
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
