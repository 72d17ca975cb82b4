// Loads legacy-shaped data through the HTTP API (the local deployment's sample data, benchmarks, tests).
// Internal: only a deploy key reaches it.
import { v } from "convex/values";
import { internalMutation } from "./_generated/server";

export const insertBatch = internalMutation({
  args: { table: v.union(v.literal("scenes"), v.literal("videoSessions")), documents: v.array(v.any()) },
  handler: async (ctx, { table, documents }) => {
    const ids: string[] = [];
    for (const document of documents) {
      ids.push(await ctx.db.insert(table, document));
    }
    return { ids };
  },
});

export const deleteBatch = internalMutation({
  args: { ids: v.array(v.string()) },
  handler: async (ctx, { ids }) => {
    let deleted = 0;
    for (const raw of ids) {
      const id = ctx.db.normalizeId("scenes", raw) ?? ctx.db.normalizeId("videoSessions", raw);
      if (id !== null && (await ctx.db.get(id)) !== null) {
        await ctx.db.delete(id);
        deleted += 1;
      }
    }
    return { deleted };
  },
});
