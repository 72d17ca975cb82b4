// Convex's snapshot export layout (crates/exports in convex-backend): README.md, then _tables/documents.jsonl
// ({name, id} per user table), then per table <table>/documents.jsonl and <table>/generated_schema.jsonl
// ("uniform"), tables ordered by size. Values use Convex's export JSON (crates/value/src/export.rs,
// `export_clean_lossless`): int64 as a bare number, a finite float64 always with a fraction or exponent ("3.0",
// "-0.0", "1e+21"), NaN/±Inf as {"$float": base64 of 8 little-endian bytes}, bytes as {"$bytes": base64}, and
// object keys sorted (Convex objects are ordered maps).
import { zipSync, type Zippable } from "fflate";
import type { Value } from "convex/values";

export type SnapshotDocument = Record<string, Value>;

export const README = `# Welcome to your Convex snapshot export!

This ZIP file contains a snapshot of the tables in your Convex deployment.

Documents for each table are listed as lines of JSON in
<table_name>/documents.jsonl files.

For details on the format and how to use this snapshot with npx convex import,
check out [the docs](https://docs.convex.dev/database/import-export/export) or
ask us in [Discord](http://convex.dev/community).
`;

function float64Base64(value: number): string {
  const buffer = Buffer.alloc(8);
  buffer.writeDoubleLE(value);
  return buffer.toString("base64");
}

export function exportJson(value: Value | undefined): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") {
    if (!Number.isFinite(value)) return JSON.stringify({ $float: float64Base64(value) });
    if (Object.is(value, -0)) return "-0.0";
    const text = JSON.stringify(value);
    return /[.eE]/.test(text) ? text : `${text}.0`;
  }
  if (typeof value === "string" || typeof value === "boolean") return JSON.stringify(value);
  if (value instanceof ArrayBuffer) return JSON.stringify({ $bytes: Buffer.from(value).toString("base64") });
  if (Array.isArray(value)) return `[${value.map((v) => exportJson(v)).join(",")}]`;
  const fields = Object.entries(value)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${exportJson(v as Value)}`).join(",")}}`;
}

export function buildSnapshotZip(tables: Map<string, SnapshotDocument[]>): Buffer {
  const encoder = new TextEncoder();
  const names = [...tables.keys()];
  const files: Zippable = { "README.md": encoder.encode(README) };
  files["_tables/documents.jsonl"] = encoder.encode(
    names.map((name, i) => JSON.stringify({ name, id: 10001 + i }) + "\n").join(""),
  );
  const bySize = [...tables.entries()].sort((a, b) => a[1].length - b[1].length);
  for (const [name, docs] of bySize) {
    const lines = docs.map((doc) => exportJson(doc) + "\n");
    files[`${name}/documents.jsonl`] = encoder.encode(lines.join(""));
    files[`${name}/generated_schema.jsonl`] = encoder.encode(JSON.stringify("uniform") + "\n");
  }
  return Buffer.from(zipSync(files, { level: 6 }));
}
