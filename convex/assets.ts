// The asset object and the asset reference vocabulary, written once: the schema's asset fields and the
// assetReferences table use these.
import { v } from "convex/values";

/** An S3 object as the runbook tracks it. `size`/`checksum` are absent when unknown: never invented. */
export const s3AssetFields = {
  s3Key: v.string(),
  s3Url: v.string(),
  contentType: v.string(),
  size: v.optional(v.number()),
  checksum: v.optional(v.string()),
  uploadedAt: v.number(),
};

export const s3Asset = v.object(s3AssetFields);

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
