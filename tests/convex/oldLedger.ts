// Test-only functions (loaded with `--extra-functions tests/convex`, as `oldLedger:<export>`): a ledger as a runbook
// from before the lock was per deployment left it, with one "lock" row per migration.
import { v } from "convex/values";
import { internalMutation } from "../../convex/_generated/server";

export const insertLock = internalMutation({
  args: { migrationId: v.string(), runId: v.string(), operator: v.string(), leaseMs: v.number() },
  handler: async (ctx, { migrationId, runId, operator, leaseMs }) => {
    const now = Date.now();
    await ctx.db.insert("migrationRuns", { kind: "lock", migrationId, runId, operator, startedAt: now, leaseExpiresAt: now + leaseMs });
  },
});
