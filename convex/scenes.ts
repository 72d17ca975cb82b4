// The legacy application's scene functions, as they are today: they read and write only legacy fields,
// and keep working unchanged after the migration (which never touches legacy fields).
import { v } from "convex/values";
import { mutation, query } from "./_generated/server";

export const get = query({
  args: { id: v.id("scenes") },
  handler: async (ctx, { id }) => await ctx.db.get(id),
});

/** The renderer records a finished chunk here. */
export const setChunk = mutation({
  args: { id: v.id("scenes"), s3ChunkKey: v.string(), s3ChunkUrl: v.string() },
  handler: async (ctx, { id, s3ChunkKey, s3ChunkUrl }) => {
    await ctx.db.patch(id, { s3ChunkKey, s3ChunkUrl, status: "completed", updatedAt: Date.now() });
    return null;
  },
});
