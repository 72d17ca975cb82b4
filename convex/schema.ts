// The deployment's schema: the tables as production has them today, plus the optional fields and the
// tables that migration 001 (S3 asset tracking) adds. Every new field is optional, so documents written by
// old code stay valid and old code keeps working (the migration is backward compatible).
//
// Legacy fields are loosely typed where production data really is messy (timestamps stored as ISO strings
// by an old writer, checksums stored as numbers, keys nulled out): the schema must accept the data that is
// there, and the runbook reports such values instead of guessing.
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export const s3Asset = v.object({
  s3Key: v.string(),
  s3Url: v.string(),
  contentType: v.string(),
  // Absent when the size is unknown: the migration never invents one.
  size: v.optional(v.number()),
  checksum: v.optional(v.string()),
  uploadedAt: v.number(),
});

export const assetsStatus = v.union(
  v.literal("pending"),
  v.literal("uploading"),
  v.literal("ready"),
  v.literal("error"),
);

export const assetType = v.union(
  v.literal("video_chunk"),
  v.literal("source_code"),
  v.literal("thumbnail"),
  v.literal("subtitle"),
  v.literal("combined_video"),
  v.literal("combined_subtitle"),
  v.literal("manifest"),
);

export const entityType = v.union(v.literal("scene"), v.literal("session"));

const looseString = v.optional(v.union(v.string(), v.null()));
const looseTimestamp = v.optional(v.union(v.number(), v.string(), v.null()));

export const previousAssetVersion = v.object({
  version: v.number(),
  videoAsset: v.optional(s3Asset),
  sourceCodeAsset: v.optional(s3Asset),
  thumbnailAsset: v.optional(s3Asset),
  subtitleAsset: v.optional(s3Asset),
  replacedAt: v.number(),
});

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

export const sceneNewFields = {
  videoAsset: v.optional(s3Asset),
  sourceCodeAsset: v.optional(s3Asset),
  thumbnailAsset: v.optional(s3Asset),
  subtitleAsset: v.optional(s3Asset),
  assetsStatus: v.optional(assetsStatus),
  assetsErrorMessage: v.optional(v.string()),
  assetVersion: v.optional(v.number()),
  previousAssetVersions: v.optional(v.array(previousAssetVersion)),
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

export const sessionNewFields = {
  combinedVideoAsset: v.optional(s3Asset),
  combinedSubtitleAsset: v.optional(s3Asset),
  manifestAsset: v.optional(s3Asset),
  totalAssetSize: v.optional(v.number()),
  assetCount: v.optional(v.number()),
  assetsStatus: v.optional(assetsStatus),
  assetsErrorMessage: v.optional(v.string()),
};

export const assetReferenceFields = {
  entityId: v.union(v.id("scenes"), v.id("videoSessions")),
  entityType,
  assetType,
  s3Key: v.string(),
  s3Url: v.string(),
  contentType: v.string(),
  size: v.optional(v.number()),
  checksum: v.optional(v.string()),
  uploadedAt: v.number(),
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
  // The runbook's ledger: one "run" row per (runId, step) and one "lock" row per migration, whose lease
  // stops two applies from running at once.
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
  }).index("by_migration", ["migrationId", "kind", "runId"]),
});
