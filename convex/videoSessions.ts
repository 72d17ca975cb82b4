// The legacy application's session functions, unchanged by the migration.
import { v } from "convex/values";
import { query } from "./_generated/server";

export const get = query({
  args: { id: v.id("videoSessions") },
  handler: async (ctx, { id }) => await ctx.db.get(id),
});
