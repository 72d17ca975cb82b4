// Test-only functions (loaded with `--extra-functions tests/convex`, as `surrogate:<export>`): JavaScript code
// can build a string holding a lone UTF-16 surrogate, which Convex (UTF-8 strings) can neither store nor return.
import { internalMutation, internalQuery } from "../../convex/_generated/server";

const lone = `status-${String.fromCharCode(0xd800)}`;

export const store = internalMutation({
  args: {},
  handler: async (ctx) => ctx.db.insert("videoSessions", { status: lone }),
});

export const give = internalQuery({
  args: {},
  handler: async () => ({ text: lone }),
});
