// Migration 001's schema fragment: the optional fields it adds to scenes and videoSessions. convex/schema.ts
// spreads them into its tables beside the legacy fields. Every field is optional, so documents written by old
// code stay valid and old code keeps working (the migration is backward compatible).
import { v } from "convex/values";
import { s3Asset } from "../../../convex/assets";

export const assetsStatus = v.union(
  v.literal("pending"),
  v.literal("uploading"),
  v.literal("ready"),
  v.literal("error"),
);

export const previousAssetVersion = v.object({
  version: v.number(),
  videoAsset: v.optional(s3Asset),
  sourceCodeAsset: v.optional(s3Asset),
  thumbnailAsset: v.optional(s3Asset),
  subtitleAsset: v.optional(s3Asset),
  replacedAt: v.number(),
});

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

export const sessionNewFields = {
  combinedVideoAsset: v.optional(s3Asset),
  combinedSubtitleAsset: v.optional(s3Asset),
  manifestAsset: v.optional(s3Asset),
  totalAssetSize: v.optional(v.number()),
  assetCount: v.optional(v.number()),
  assetsStatus: v.optional(assetsStatus),
  assetsErrorMessage: v.optional(v.string()),
};
