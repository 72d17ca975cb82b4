// Benchmark reference only: the server side of the seed's original migration algorithm (migration 001 as
// first written), so `make bench` can measure the runbook against it on the same local deployment.
// It is NOT part of the project's deployed functions (`tsc -p convex` does not see it); the local
// deployment loads it with `--extra-functions benchmarks/convex`, as `naive:<export>`.
//
// What makes it the "naive" algorithm: one unpaginated `.collect()` per table (fails beyond Convex's read
// limits), and one mutation per document and per asset reference (one round trip each), without
// preconditions, idempotency or batching.
import { v } from "convex/values";
import { internalMutation, internalQuery } from "../../convex/_generated/server";
import { sceneNewFields, sessionNewFields } from "../../helpers/migrations/m001_s3_asset_tracking/schema";
import { assetReferenceFields } from "../../convex/schema";

/** Every scene in one query: the seed's read. */
export const listScenes = internalQuery({
  args: {},
  handler: async (ctx) => {
    return await ctx.db.query("scenes").collect();
  },
});

/** Every video session in one query. */
export const listSessions = internalQuery({
  args: {},
  handler: async (ctx) => {
    return await ctx.db.query("videoSessions").collect();
  },
});

/** Patches one scene with its new fields (blindly: no check of what the document holds now). */
export const updateScene = internalMutation({
  args: { id: v.id("scenes"), fields: v.object(sceneNewFields) },
  handler: async (ctx, { id, fields }) => {
    await ctx.db.patch(id, fields);
    return null;
  },
});

/** Patches one video session with its new fields. */
export const updateSession = internalMutation({
  args: { id: v.id("videoSessions"), fields: v.object(sessionNewFields) },
  handler: async (ctx, { id, fields }) => {
    await ctx.db.patch(id, fields);
    return null;
  },
});

/** Inserts one assetReferences row (one mutation, one round trip, per asset). */
export const createAssetReference = internalMutation({
  args: assetReferenceFields,
  handler: async (ctx, reference) => {
    return await ctx.db.insert("assetReferences", reference);
  },
});
