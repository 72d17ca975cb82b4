// The deployment's schema: the tables as production has them today, plus the optional fields migration 001
// (S3 asset tracking) adds (its fragment, helpers/migrations/m001_s3_asset_tracking/schema.ts) and the tables
// the runbook writes (assetReferences, migrationRuns). Every new field is optional, so documents written by
// old code stay valid and old code keeps working (the migration is backward compatible).
//
// Legacy fields are loosely typed where production data really is messy (timestamps stored as ISO strings
// by an old writer, checksums stored as numbers, keys nulled out): the schema must accept the data that is
// there, and the runbook reports such values instead of guessing.
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
import { sceneNewFields, sessionNewFields } from "../helpers/migrations/m001_s3_asset_tracking/schema";
import { assetType, entityType, s3AssetFields } from "./assets";

const looseString = v.optional(v.union(v.string(), v.null()));
const looseTimestamp = v.optional(v.union(v.number(), v.string(), v.null()));

export const sceneLegacyFields = {
  sessionId: v.id("videoSessions"),
  sceneIndex: v.union(v.number(), v.string()),
  title: v.optional(v.string()),
  status: v.string(),
  // An old render worker stored error objects (nested) here instead of a message.
  errorMessage: v.optional(v.any()),
  s3ChunkKey: looseString,
  s3ChunkUrl: looseString,
  s3ChunkSize: v.optional(v.union(v.number(), v.string(), v.null())),
  sourceCodeKey: looseString,
  sourceCodeUrl: looseString,
  thumbnailKey: looseString,
  thumbnailUrl: looseString,
  subtitleKey: looseString,
  subtitleUrl: looseString,
  checksum: v.optional(v.union(v.string(), v.number(), v.null())),
  updatedAt: looseTimestamp,
};

export const sessionLegacyFields = {
  title: v.optional(v.string()),
  userId: v.optional(v.string()),
  status: v.string(),
  errorMessage: looseString,
  combinedVideoKey: looseString,
  combinedVideoUrl: looseString,
  combinedSubtitleKey: looseString,
  combinedSubtitleUrl: looseString,
  manifestKey: looseString,
  manifestUrl: looseString,
  updatedAt: looseTimestamp,
};

export const assetReferenceFields = {
  entityId: v.union(v.id("scenes"), v.id("videoSessions")),
  entityType,
  assetType,
  ...s3AssetFields,
  version: v.number(),
  createdAt: v.number(),
  metadata: v.object({
    migratedFromLegacy: v.boolean(),
    migrationId: v.string(),
    runId: v.string(),
    legacyField: v.optional(v.string()),
  }),
};

export default defineSchema({
  videoSessions: defineTable({ ...sessionLegacyFields, ...sessionNewFields }),
  scenes: defineTable({ ...sceneLegacyFields, ...sceneNewFields })
    .index("by_session", ["sessionId", "sceneIndex"]),
  assetReferences: defineTable(assetReferenceFields)
    .index("by_entity", ["entityId", "assetType"])
    .index("by_s3_key", ["s3Key"]),
  // The runbook's ledger: one "run" row per (runId, step), and the deployment's one "lock" row, whose lease
  // stops two writing steps (apply or rollback, of any migration) from running at once.
  migrationRuns: defineTable({
    kind: v.union(v.literal("run"), v.literal("lock")),
    migrationId: v.string(),
    runId: v.string(),
    step: v.optional(v.string()),
    status: v.optional(v.string()),
    operator: v.string(),
    startedAt: v.number(),
    finishedAt: v.optional(v.number()),
    leaseExpiresAt: v.optional(v.number()),
    counts: v.optional(v.record(v.string(), v.number())),
    details: v.optional(v.string()),
    // sha256 of what the step read and wrote (run-folder path -> hex digest): anchors the evidence here.
    evidence: v.optional(v.record(v.string(), v.string())),
    // When the deployment wrote the row (its own clock): orders a run's step rows and seals.
    recordedAt: v.optional(v.number()),
  })
    .index("by_migration", ["migrationId", "kind", "runId"])
    .index("by_kind", ["kind", "runId"]),
});
