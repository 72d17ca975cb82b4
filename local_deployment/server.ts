// The local Convex test deployment: an HTTP server that speaks Convex's public HTTP API and runs this
// project's own convex/ functions through the official convex-test library.
//
// What it is: the runbook's wire protocol (function calls, auth, error shapes, status codes, validators,
// pagination, per-function limits, snapshot export) served by convex-test's in-memory database.
// What it is not: Convex. Memory only unless --data-dir names a folder (then every committed transaction is
// journaled there before its answer is sent), no deploy, no subscriptions, no optimistic concurrency
// (convex-test runs one transaction at a time), no file storage, no user auth (JWT), no WebSocket sync protocol
// (the sync route refuses at once, so `convex.ConvexClient` fails; `ConvexHttpClient` works).
//
// Usage: CONVEX_DEPLOY_KEY=... tsx local_deployment/server.ts --port 3210 [--data-dir DIR] [--fault-rate 0.1]
//        [--fault-kinds 5xx,drop,delay,timeout,oom] [--fault-seed 1] [--fault-paths migration:applyBatch,...]
//        [--fault-delay-ms MS]
//        [--export-fault failed|canceled|truncate|lost-response] [--export-ms 50]
//        [--undeployed migration,migration:countSideRows,...] [--extra-functions DIR]
// Prints one JSON line {"event":"ready","url":...,"documents":N} on stdout once it accepts requests (N: the
// documents it holds, loaded from --data-dir).
import { AsyncLocalStorage } from "node:async_hooks";
import { randomBytes } from "node:crypto";
import {
  closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, writeSync,
} from "node:fs";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { makeFunctionReference } from "convex/server";
import { convexToJson, jsonToConvex, type Value } from "convex/values";
import { convexTest } from "convex-test";

import schema from "../convex/schema.js";
import { buildSnapshotZip, exportJson, type SnapshotDocument } from "./snapshot.js";

// ---------------------------------------------------------------------------------------------------
// Start-up options

const { values: options } = parseArgs({
  options: {
    port: { type: "string", default: "3210" },
    host: { type: "string", default: "127.0.0.1" },
    "fault-rate": { type: "string", default: "0" },
    "fault-kinds": { type: "string", default: "5xx,drop,delay" },
    "fault-seed": { type: "string", default: "1" },
    "fault-paths": { type: "string", default: "" },
    "fault-delay-ms": { type: "string" },
    "export-fault": { type: "string" },
    undeployed: { type: "string", default: "" },
    "export-ms": { type: "string", default: "50" },
    "extra-functions": { type: "string" },
    "data-dir": { type: "string" },
  },
});

const adminKey = process.env.CONVEX_DEPLOY_KEY ?? "";
if (adminKey.trim() === "") {
  process.stderr.write("CONVEX_DEPLOY_KEY must be set: it is this deployment's admin key.\n");
  process.exit(2);
}
const faultRate = Number(options["fault-rate"]);
const faultKinds = options["fault-kinds"]!.split(",").filter((k) => k !== "");
// Function paths (prefixes) that faults hit; empty means every function call.
const faultPaths = options["fault-paths"]!.split(",").filter((p) => p !== "");
// The length of a `delay` fault: fixed when given (a race test needs every call slowed alike), else 200–1,000 ms.
const faultDelayMs = options["fault-delay-ms"] === undefined ? undefined : Number(options["fault-delay-ms"]);
if (faultDelayMs !== undefined && !(Number.isFinite(faultDelayMs) && faultDelayMs >= 0)) {
  process.stderr.write(`--fault-delay-ms must be a number of milliseconds (0 or more), not ${options["fault-delay-ms"]}.\n`);
  process.exit(2);
}
const exportFault = options["export-fault"];
// Function modules (or single functions) answered as "not deployed" (functions never pushed, or an older push).
const undeployed = options.undeployed!.split(",").filter((m) => m !== "");
const MAX_ARGS_BYTES = 16 * 1024 * 1024; // Convex: function arguments up to 16 MiB
const MAX_ARRAY_LENGTH = 8192; // Convex: arrays hold at most 8192 values
const MAX_VALUE_DEPTH = 64; // Convex: values nest at most 64 levels

// A small seeded generator so a fault run can be repeated.
let faultState = Number(options["fault-seed"]) >>> 0 || 1;
function nextRandom(): number {
  faultState ^= faultState << 13;
  faultState ^= faultState >>> 17;
  faultState ^= faultState << 5;
  return (faultState >>> 0) / 4294967296;
}

// ---------------------------------------------------------------------------------------------------
// The project's functions, loaded the way convex-test expects ("./convex/<file>.ts" → module)

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
type ModuleLoader = () => Promise<Record<string, unknown>>;
const modules: Record<string, ModuleLoader> = {};
function addModules(dir: string, prefix: string) {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name);
    if (entry.isDirectory() && entry.name === "_generated") addModules(full, `${prefix}_generated/`);
    else if (entry.isFile() && /\.ts$/.test(entry.name) && !entry.name.endsWith(".d.ts")) {
      modules[`./convex/${prefix}${entry.name}`] = () => import(pathToFileURL(full).href);
    }
  }
}
addModules(join(root, "convex"), "");
if (options["extra-functions"]) {
  // Benchmark-only functions (e.g. the naive baseline); never part of the deployed project.
  for (const name of readdirSync(options["extra-functions"])) {
    if (name.endsWith(".ts")) {
      const full = resolve(options["extra-functions"], name);
      modules[`./convex/${name}`] = () => import(pathToFileURL(full).href);
    }
  }
}

// Capture convex-test's global (its in-memory database) when it enters its context: the snapshot export
// reads committed documents directly, which no function could do inside Convex's per-function limits.
type ConvexGlobal = {
  components: Record<string, { db: { _documents: Record<string, Record<string, Value>> } }>;
  transactionManager: { _lastCommitTs: bigint };
};
let convexGlobal: ConvexGlobal | null = null;
const originalRun = AsyncLocalStorage.prototype.run;
AsyncLocalStorage.prototype.run = function (this: AsyncLocalStorage<unknown>, store: unknown, ...rest: unknown[]) {
  if (convexGlobal === null && store && typeof store === "object" && "transactionManager" in store && "components" in store) {
    convexGlobal = store as ConvexGlobal;
  }
  return (originalRun as (...a: unknown[]) => unknown).call(this, store, ...rest);
} as typeof AsyncLocalStorage.prototype.run;

const t = convexTest({ schema, modules: modules as never, transactionLimits: true });
await t.run(async () => null); // enters the context once, so convexGlobal is known from the start

type Kind = "query" | "mutation" | "action";
type Registered = { isQuery?: boolean; isMutation?: boolean; isAction?: boolean; isPublic?: boolean; isInternal?: boolean };

async function lookupFunction(path: string): Promise<{ kind: Kind; isPublic: boolean } | null> {
  const [modulePath, exportName = "default"] = path.split(":");
  const loader = modules[`./convex/${modulePath.replace(/\.js$/, "")}.ts`];
  if (!loader || modulePath.startsWith("_generated")) return null;
  const fn = (await loader())[exportName] as Registered | undefined;
  if (!fn || typeof fn !== "function" && typeof fn !== "object") return null;
  const kind: Kind | null = fn.isQuery ? "query" : fn.isMutation ? "mutation" : fn.isAction ? "action" : null;
  if (kind === null) return null;
  return { kind, isPublic: fn.isPublic === true };
}

// ---------------------------------------------------------------------------------------------------
// Value formats: "convex_encoded_json" (lossless, $integer/$bytes) and "json" (clean export)

function cleanJson(value: Value): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof ArrayBuffer) return Buffer.from(value).toString("base64");
  if (typeof value === "number" && !Number.isFinite(value)) return Number.isNaN(value) ? "NaN" : value > 0 ? "Infinity" : "-Infinity";
  if (Array.isArray(value)) return value.map(cleanJson);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) => [k, cleanJson(v as Value)]));
  }
  return value;
}

function encodeValue(value: Value, format: string): unknown {
  return format === "convex_encoded_json" ? convexToJson(value) : cleanJson(value);
}

function checkValueShape(value: unknown, depth = 0): string | null {
  if (depth > MAX_VALUE_DEPTH) return `Value is too nested (depth > ${MAX_VALUE_DEPTH})`;
  if (Array.isArray(value)) {
    if (value.length > MAX_ARRAY_LENGTH) return `Array length is too long (${value.length} > maximum length ${MAX_ARRAY_LENGTH})`;
    for (const item of value) {
      const problem = checkValueShape(item, depth + 1);
      if (problem) return problem;
    }
  } else if (value !== null && typeof value === "object") {
    for (const item of Object.values(value)) {
      const problem = checkValueShape(item, depth + 1);
      if (problem) return problem;
    }
  }
  return null;
}

// Convex keeps strings as UTF-8 (Rust): a lone UTF-16 surrogate, which a JavaScript string can hold, cannot be
// stored, passed or returned there. These find one (in a key or a string) so the server refuses it as Convex does.
// Every write passes here, so it walks without allocating and asks V8's own check (String.isWellFormed, ES2024).
const wellFormedString = (text: string) => (text as unknown as { isWellFormed(): boolean }).isWellFormed();

function holdsLoneSurrogate(value: unknown): boolean {
  if (typeof value === "string") return !wellFormedString(value);
  if (Array.isArray(value)) {
    for (const item of value) if (holdsLoneSurrogate(item)) return true;
    return false;
  }
  if (value !== null && typeof value === "object" && !(value instanceof ArrayBuffer)) {
    for (const key in value) {
      if (!wellFormedString(key) || holdsLoneSurrogate((value as Record<string, unknown>)[key])) return true;
    }
  }
  return false;
}

/** serde_json's refusal of a lone surrogate escape in a request body, with its line and column. */
function surrogateSyntaxError(text: string): string {
  const escape = /\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}/.exec(text);
  const end = escape ? escape.index + escape[0].length : text.length;
  const before = text.slice(0, end).split("\n");
  const high = escape !== null && /[89abAB]/.test(escape[0][3]);
  const what = high ? "unexpected end of hex escape" : "lone leading surrogate in hex escape";
  return `Failed to parse the request body as JSON: ${what} at line ${before.length} column ${before[before.length - 1].length}`;
}

/** Rust's refusal when a function hands over a document (or result) holding a lone surrogate. */
function utf8Error(value: unknown): string {
  const json = JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v instanceof ArrayBuffer ? "" : v));
  // JSON.stringify escapes a lone surrogate ("\\ud800"); Rust meets it as raw bytes at that place.
  const index = Buffer.byteLength(json.slice(0, Math.max(0, json.search(/\\ud[89a-f][0-9a-f]{2}/))), "utf8");
  return `invalid utf-8 sequence of 1 bytes from index ${index}`;
}

// Stored documents: every write of the root component's database passes here (convex-test's DatabaseFake).
{
  const db = convexGlobal!.components[""].db as unknown as { _addWrite: (id: string, value: unknown) => void };
  const addWrite = db._addWrite.bind(db);
  db._addWrite = (id: string, value: unknown) => {
    if (value !== null && holdsLoneSurrogate(value)) throw new Error(utf8Error(value));
    addWrite(id, value);
    noteWrite(id, value);
  };
}

// Query cost independent of the database's size. convex-test answers every query (an index range included) by
// visiting every document of every table; real Convex reads the index range. So each scan here visits only
// candidates: the ids ever written to its table; for an index range with an `eq` on a field that leads one of the
// table's declared indexes, the ids ever written with that string in that field; for a page of a whole table
// after a cursor, the ids created from the cursor's document on (convex-test's inserts have strictly increasing
// creation times). Candidates are a superset of the matches (a later write may have moved a document away), and
// convex-test still reads, filters, sorts and counts every candidate as before, so every query answers exactly
// what the full scan answers.
type QuerySource = {
  type: string; tableName?: string; indexName?: string; order?: string;
  range?: { type: string; fieldPath: string; value: unknown }[];
};
type ScanningDatabase = {
  get: (table: string, id: string) => unknown;
  _iterateDocs: (table: string, visit: (doc: unknown) => void) => void;
  _resolveQuerySource: (query: { source: QuerySource }) => unknown;
  paginate: (args: { query: { source: QuerySource }; cursor: unknown }) => unknown;
};
type CreationOrder = { times: number[]; ids: string[] } | "unordered";
const idsByTable = new Map<string, Set<string>>();
const idsByLeadingValue = new Map<string, Set<string>>(); // `${table}\0${field}\0${value}` -> ids
const creationOrder = new Map<string, CreationOrder>();
const leadingFields = new Map<string, Set<string>>(
  Object.entries(schema.tables).map(([name, table]) => [
    name,
    new Set(exportedIndexes(table).map((index) => index.fields[0]).filter((field) => !field.includes("."))),
  ]),
);
let candidates: { table: string; ids: Iterable<string> } | null = null;

function exportedIndexes(table: unknown): { fields: string[] }[] {
  return (table as { export: () => { indexes: { fields: string[] }[] } }).export().indexes; // as convex-test reads it
}

function idTable(id: string): string | null {
  const digits = /^[0-9]+/.exec(id); // convex-test's tableNameFromId
  return digits === null || digits[0].length === id.length ? null : id.slice(digits[0].length);
}

function addCandidate(index: Map<string, Set<string>>, key: string, id: string) {
  let ids = index.get(key);
  if (ids === undefined) index.set(key, (ids = new Set()));
  ids.add(id);
}

function noteWrite(id: string, value: unknown) {
  const table = idTable(id);
  if (table === null) return;
  if (!idsByTable.get(table)?.has(id)) noteCreation(table, id, (value as { _creationTime?: unknown } | null)?._creationTime);
  addCandidate(idsByTable, table, id);
  if (value === null || typeof value !== "object") return;
  for (const field of leadingFields.get(table) ?? []) {
    const held = (value as Record<string, unknown>)[field];
    if (typeof held === "string") addCandidate(idsByLeadingValue, `${table}\0${field}\0${held}`, id);
  }
}

/** A document's first write is its insert: kept in creation order, unless a time ever runs backwards. */
function noteCreation(table: string, id: string, time: unknown) {
  const order = creationOrder.get(table) ?? { times: [], ids: [] };
  if (order === "unordered" || typeof time !== "number" || time <= (order.times.at(-1) ?? -Infinity)) {
    creationOrder.set(table, "unordered"); // every page then visits the whole table, as convex-test does
    return;
  }
  order.times.push(time);
  order.ids.push(id);
  creationOrder.set(table, order);
}

/** The ids of a table created at or after `time`, in creation order. */
function* createdFrom(order: { times: number[]; ids: string[] }, time: number): Iterable<string> {
  let low = 0;
  let high = order.times.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (order.times[middle] < time) low = middle + 1;
    else high = middle;
  }
  for (let i = low; i < order.ids.length; i++) yield order.ids[i];
}

/** The creation time a page cursor of a whole-table scan starts after (convex-test's cursor: JSON of its keys). */
function cursorCreationTime(cursor: unknown): number | null {
  if (typeof cursor !== "string" || cursor === "_end_cursor") return null;
  try {
    const keys = JSON.parse(cursor) as unknown;
    const first = Array.isArray(keys) && typeof keys[0] === "string" ? (JSON.parse(keys[0]) as unknown) : null;
    return typeof first === "number" ? first : null;
  } catch {
    return null; // convex-test refuses it itself
  }
}

{
  const db = convexGlobal!.components[""].db as unknown as ScanningDatabase;
  db._iterateDocs = (table, visit) => {
    for (const id of candidates?.table === table ? candidates.ids : idsByTable.get(table) ?? []) {
      const doc = db.get(table, id);
      if (doc !== null) visit(doc);
    }
  };
  const resolveQuerySource = db._resolveQuerySource.bind(db);
  db._resolveQuerySource = (query) => {
    const { type, indexName, range } = query.source;
    const table = indexName?.split(".")[0] ?? "";
    const eq = type === "IndexRange" ? range?.find((r) => r.type === "Eq" && typeof r.value === "string" && leadingFields.get(table)?.has(r.fieldPath)) : undefined;
    if (eq === undefined) return resolveQuerySource(query);
    candidates = { table, ids: idsByLeadingValue.get(`${table}\0${eq.fieldPath}\0${eq.value}`) ?? new Set() };
    try {
      return resolveQuerySource(query);
    } finally {
      candidates = null;
    }
  };
  const paginate = db.paginate.bind(db);
  db.paginate = (args) => {
    const { type, tableName, order } = args.query.source;
    const from = type === "FullTableScan" && (order ?? "asc") === "asc" ? cursorCreationTime(args.cursor) : null;
    const ordered = tableName === undefined ? undefined : creationOrder.get(tableName);
    if (from === null || ordered === undefined || ordered === "unordered") return paginate(args);
    candidates = { table: tableName!, ids: createdFrom(ordered, from) };
    try {
      return paginate(args);
    } finally {
      candidates = null;
    }
  };
}

// ---------------------------------------------------------------------------------------------------
// Persistence (--data-dir DIR): a journal of committed transactions, each line written and fsynced before the
// function's answer is sent, so a server killed at any instant (SIGKILL included) holds on restart every
// mutation it acknowledged. At start the journal is read (a torn last line is a transaction nobody heard of)
// and rewritten as one line holding every document, atomically (temporary file, fsync, rename).

type JournalDatabase = {
  _documents: Record<string, Value>;
  _writes: Record<string, Value | null>[];
  _nextDocId: number;
  _lastCreationTime: number;
  commit: (commitTs?: bigint | null) => void;
};
type JournalLine = { ts: string; next: number; created: number; docs: [string, unknown][] };
const JOURNAL_FILE = "journal.jsonl";

function openJournal(dir: string): void {
  const db = convexGlobal!.components[""].db as unknown as JournalDatabase;
  const manager = convexGlobal!.transactionManager;
  const path = join(dir, JOURNAL_FILE);
  mkdirSync(dir, { recursive: true });
  if (existsSync(path)) {
    for (const text of readFileSync(path, "utf8").split("\n")) {
      let line: JournalLine;
      try {
        line = JSON.parse(text) as JournalLine;
      } catch {
        break; // the end, or a line torn by a kill: its transaction was never answered
      }
      for (const [id, doc] of line.docs) {
        if (doc === null) delete db._documents[id];
        else noteWrite(id, (db._documents[id] = jsonToConvex(doc as never)));
      }
      manager._lastCommitTs = BigInt(line.ts);
      db._nextDocId = line.next;
      db._lastCreationTime = line.created;
    }
  }
  const entry = (id: string): [string, unknown] => [id, id in db._documents ? convexToJson(db._documents[id]) : null];
  const state = () => ({ ts: manager._lastCommitTs.toString(), next: db._nextDocId, created: db._lastCreationTime });
  const compacted = `${path}.tmp`;
  const out = openSync(compacted, "w");
  writeFully(out, JSON.stringify({ ...state(), docs: Object.keys(db._documents).map(entry) }) + "\n");
  fsyncSync(out);
  closeSync(out);
  renameSync(compacted, path);
  const folder = openSync(dir, "r");
  fsyncSync(folder); // the rename itself survives a crash
  closeSync(folder);
  const journal = openSync(path, "a");
  const commit = db.commit.bind(db);
  db.commit = (commitTs = null) => {
    const written = db._writes.length === 1 ? Object.keys(db._writes[0]) : []; // only the outermost commit persists
    commit(commitTs);
    if (written.length === 0) return;
    try {
      writeFully(journal, JSON.stringify({ ...state(), docs: written.map(entry) }) + "\n");
      fsyncSync(journal);
    } catch (error) {
      // Memory now holds a commit the disk does not: stop before anyone hears of it.
      process.stderr.write(`cannot write ${path}: ${(error as Error).message}; stopping\n`);
      process.exit(70);
    }
  };
}

function writeFully(fd: number, text: string): void {
  const bytes = Buffer.from(text, "utf8");
  for (let offset = 0; offset < bytes.length; ) offset += writeSync(fd, bytes, offset);
}

if (options["data-dir"]) openJournal(resolve(options["data-dir"]));

// ---------------------------------------------------------------------------------------------------
// HTTP plumbing

class HttpError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

/** Serialized as Convex's Rust backend does: a float64 always carries a fraction ("5.0"), which is how the
 * official Python client tells float64 (float) from int64 (`$integer`) and why it rejects a bare `5`. */
function sendJson(res: ServerResponse, status: number, body: unknown) {
  const payload = Buffer.from(exportJson(body as Value));
  res.writeHead(status, { "content-type": "application/json", "content-length": payload.length });
  res.end(payload);
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_ARGS_BYTES + 1024 * 1024) throw new HttpError(413, "RequestTooLarge", `Request body too large (limit: ${MAX_ARGS_BYTES} bytes of arguments).`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

type Identity = "admin" | "anonymous";

/** Mirrors Convex: `Convex <admin key>` authenticates an admin; a wrong key is 401 BadAdminKey. */
function authenticate(req: IncomingMessage): Identity {
  const header = req.headers.authorization;
  if (header === undefined || header.trim() === "") return "anonymous";
  if (/^convex /i.test(header)) {
    if (header.slice(7).trim() === adminKey) return "admin";
    throw new HttpError(401, "BadAdminKey", "The provided admin key was invalid for this instance");
  }
  if (/^bearer /i.test(header)) {
    throw new HttpError(401, "InvalidAuthHeader", "Could not parse as OIDC ID token. Token might not be an OIDC-compliant JWT.");
  }
  throw new HttpError(401, "InvalidAuthHeader", "Header must begin with `bearer `");
}

function requireAdmin(identity: Identity) {
  if (identity !== "admin") {
    throw new HttpError(403, "BadDeployKey", "The provided deploy key was invalid for this deployment. Double check that the environment this key was generated for matches the desired deployment.");
  }
}

function requestId(): string {
  return randomBytes(8).toString("hex");
}

/** The error text Convex returns for a function that threw: request id, "Server Error", the error. */
function functionErrorMessage(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const name = error instanceof Error && error.name !== "Error" ? error.name : "Uncaught Error";
  return wellFormed(`[Request ID: ${requestId()}] Server Error\n${name}: ${message}`);
}

/** convex-test's messages quote strings by UTF-16 code unit (e.g. "invalid character '\ud800'" for half of an
 * emoji); Convex's are Rust strings, always valid UTF-8. A lone surrogate becomes U+FFFD, as Rust's lossy
 * conversion would write it. */
function wellFormed(text: string): string {
  return text.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "\ufffd");
}

// ---------------------------------------------------------------------------------------------------
// Function calls: POST /api/query | /api/mutation | /api/action | /api/function

const ENDPOINT_KINDS: Record<string, Kind | "any"> = {
  "/api/query": "query",
  "/api/mutation": "mutation",
  "/api/action": "action",
  "/api/function": "any",
};

async function callFunction(req: IncomingMessage, res: ServerResponse, endpoint: Kind | "any") {
  const identity = authenticate(req);
  const raw = await readBody(req);
  let body: { path?: unknown; args?: unknown; format?: unknown };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    throw new HttpError(400, "BadJsonBody", "Failed to parse the request body as JSON: invalid unicode code point");
  }
  try {
    body = JSON.parse(text);
  } catch {
    throw new HttpError(400, "BadJsonBody", "Failed to deserialize the JSON body.");
  }
  if (holdsLoneSurrogate(body)) throw new HttpError(400, "BadJsonBody", surrogateSyntaxError(text));
  if (typeof body.path !== "string") throw new HttpError(400, "BadJsonBody", "Failed to deserialize the JSON body: missing field `path`");
  const format = body.format === undefined || body.format === null ? "json" : String(body.format);
  if (format !== "json" && format !== "convex_encoded_json") {
    throw new HttpError(400, "InvalidFormat", `Invalid format: ${format}`);
  }
  const path = body.path.replace(/\.js(?=:|$)/, "");
  const fail = (message: string) => sendJson(res, 200, { status: "error", errorMessage: message });

  if (path === "_system/cli/exports:getLatest") {
    requireAdmin(identity);
    return sendJson(res, 200, { status: "success", value: encodeValue(latestExportValue(), format) });
  }
  const fn = undeployed.some((name) => path === name || path.startsWith(`${name}:`)) ? null : await lookupFunction(path);
  if (fn === null || (!fn.isPublic && identity !== "admin")) {
    // Convex answers a missing and an internal-without-admin-key function alike.
    return fail(`Could not find function for '${path}'. Did you forget to run \`npx convex dev\`?`);
  }
  if (endpoint !== "any" && endpoint !== fn.kind) {
    const label = (k: string) => k[0].toUpperCase() + k.slice(1);
    return fail(`Trying to execute ${path} as ${label(endpoint)}, but it is defined as ${label(fn.kind)}.`);
  }
  if (raw.length > MAX_ARGS_BYTES) {
    return fail(`Arguments for ${path} are too large (${raw.length} bytes, limit: ${MAX_ARGS_BYTES} bytes). This is a Convex limit.`);
  }
  const shapeProblem = checkValueShape(body.args);
  if (shapeProblem) return fail(functionErrorMessage(new Error(shapeProblem)));

  // Convex's UdfArgsJson: an object is the one argument; an array holds the positional arguments (the JS
  // ConvexHttpClient sends `[args]`), of which a Convex function takes one, its arguments object.
  let rawArgs = body.args ?? {};
  if (Array.isArray(rawArgs)) {
    if (rawArgs.length > 1) {
      return fail(functionErrorMessage(new Error(`A Convex function takes one argument, an object; ${path} was given ${rawArgs.length}.`)));
    }
    rawArgs = rawArgs[0] ?? {};
  }
  let args: Value;
  try {
    args = jsonToConvex(rawArgs as never);
  } catch (error) {
    return fail(functionErrorMessage(error));
  }
  if (args === null || typeof args !== "object" || Array.isArray(args)) {
    return fail(functionErrorMessage(new Error("The arguments to a Convex function must be an object.")));
  }
  const dropAfter = faultPaths.length === 0 || faultPaths.some((prefix) => path.startsWith(prefix))
    ? await injectFaultBefore(res)
    : "none";
  if (dropAfter === "handled") return;
  if (dropAfter === "timeout" || dropAfter === "oom") return fail(`[Request ID: ${requestId()}] Server Error\n${TERMINATIONS[dropAfter]}`);
  let value: Value;
  try {
    // Typed calls need generated API types; the server dispatches by name, so it calls untyped.
    const untyped = t as unknown as Record<Kind, (ref: unknown, args: unknown) => Promise<Value>>;
    value = await withoutStackTraces(() => untyped[fn.kind](makeFunctionReference(path), args));
  } catch (error) {
    const data = (error as { data?: Value }).data;
    if (dropAfter === "drop") return req.socket.destroy();
    return sendJson(res, 200, {
      status: "error",
      errorMessage: functionErrorMessage(error),
      ...(data !== undefined ? { errorData: encodeValue(data, format) } : {}),
    });
  }
  if (dropAfter === "drop") return req.socket.destroy(); // executed, but the caller never hears of it
  if (holdsLoneSurrogate(value)) return fail(functionErrorMessage(new Error(utf8Error(value))));
  sendJson(res, 200, { status: "success", value: encodeValue(value ?? null, format) });
}

// convex-test checks a value against a union by trying each member and catching the Error a miss throws; V8
// records a stack trace for every such Error, which was a third of apply's time here (a reference's assetType
// alone is a union of seven literals). No answer carries a stack (functionErrorMessage sends the message only),
// so none is recorded while functions run; the server's own errors keep theirs.
let functionsRunning = 0;
const stackTraceLimit = Error.stackTraceLimit;

async function withoutStackTraces<T>(run: () => Promise<T>): Promise<T> {
  if (functionsRunning++ === 0) Error.stackTraceLimit = 0;
  try {
    return await run();
  } finally {
    if (--functionsRunning === 0) Error.stackTraceLimit = stackTraceLimit;
  }
}

// Convex's own texts when a function is stopped (crates/isolate/src/termination.rs).
const TERMINATIONS = {
  timeout: "Function execution timed out (maximum duration: 1s)",
  oom: "JavaScript execution ran out of memory (maximum memory usage: 64 MB)",
};

/** Faults chosen at start-up: a 5xx before executing, a dropped connection after executing, a delay, or the
 * function stopped by Convex's time or memory limit (`timeout`, `oom`: answered without executing). */
async function injectFaultBefore(res: ServerResponse): Promise<"none" | "drop" | "handled" | "timeout" | "oom"> {
  if (faultRate <= 0 || nextRandom() >= faultRate || faultKinds.length === 0) return "none";
  const kind = faultKinds[Math.floor(nextRandom() * faultKinds.length)];
  if (kind === "5xx") {
    const status = nextRandom() < 0.5 ? 503 : 502;
    sendJson(res, status, { code: "ServiceUnavailable", message: "Injected fault: service temporarily unavailable." });
    return "handled";
  }
  if (kind === "delay") {
    await new Promise((r) => setTimeout(r, faultDelayMs ?? 200 + Math.floor(nextRandom() * 800)));
    return "none";
  }
  return kind === "drop" || kind === "timeout" || kind === "oom" ? kind : "none";
}

// ---------------------------------------------------------------------------------------------------
// Snapshot export: POST /api/export/request/zip, _system/cli/exports:getLatest, GET /api/export/zip/<ts>

type ExportRecord = {
  _id: string;
  _creationTime: number;
  state: "requested" | "in_progress" | "completed" | "failed" | "canceled";
  format: { format: "zip"; include_storage: boolean };
  requestor: "snapshotExport";
  start_ts: bigint;
  complete_ts?: bigint;
  zip_object_key?: string;
};
let latestExport: ExportRecord | null = null;
let answerLost = false;
// How long an export runs; with a lost answer, long enough for the caller's retry to meet it in progress.
const EXPORT_MS = Math.max(Number(options["export-ms"]), exportFault === "lost-response" ? 3000 : 0);
const exportArchives = new Map<string, Buffer>();

function latestExportValue(): Value {
  if (latestExport === null) return null;
  const { complete_ts, zip_object_key, ...rest } = latestExport;
  return {
    ...rest,
    ...(complete_ts !== undefined ? { complete_ts } : {}),
    ...(zip_object_key !== undefined ? { zip_object_key } : {}),
  } as Value;
}

function snapshotTimestamp(): bigint {
  const last = convexGlobal!.transactionManager._lastCommitTs;
  return last > 0n ? last : BigInt(Date.now()) * 1_000_000n;
}

function requestExport(req: IncomingMessage, res: ServerResponse, url: URL) {
  requireAdmin(authenticate(req));
  if (latestExport !== null && (latestExport.state === "requested" || latestExport.state === "in_progress")) {
    throw new HttpError(400, "ExportInProgress", "There is already an export requested or in progress.");
  }
  const includeStorage = url.searchParams.get("includeStorage") === "true";
  latestExport = {
    _id: `export${randomBytes(12).toString("hex")}`,
    _creationTime: Date.now(),
    state: "requested",
    format: { format: "zip", include_storage: includeStorage },
    requestor: "snapshotExport",
    start_ts: 0n,
  };
  const record = latestExport;
  // The export runs after the response, as Convex's export worker does; the caller follows getLatest.
  setTimeout(() => {
    record.state = "in_progress";
    // One instant: committed documents read synchronously, so no transaction can commit in between.
    const startTs = snapshotTimestamp();
    record.start_ts = startTs;
    const tables = collectCommittedDocuments();
    setTimeout(() => {
      if (exportFault === "failed" || exportFault === "canceled") {
        record.state = exportFault;
        return;
      }
      exportArchives.set(startTs.toString(), buildSnapshotZip(tables));
      record.zip_object_key = `${randomBytes(16).toString("hex")}.zip`;
      record.complete_ts = BigInt(Date.now()) * 1_000_000n;
      record.state = "completed";
    }, EXPORT_MS);
  }, 50);
  // A lost answer: the first export is started, but the caller never hears of it (and, asking again, meets it).
  if (exportFault === "lost-response" && !answerLost) {
    answerLost = true;
    return req.socket.destroy();
  }
  res.writeHead(200, { "content-length": 0 });
  res.end();
}

function collectCommittedDocuments(): Map<string, SnapshotDocument[]> {
  const tables = new Map<string, SnapshotDocument[]>(Object.keys(schema.tables).map((name) => [name, []]));
  const documents = convexGlobal!.components[""].db._documents; // "" is convex-test's root component
  for (const [id, doc] of Object.entries(documents)) {
    const table = tableOfId(id);
    if (!tables.has(table)) tables.set(table, []);
    // convex-test replaces a document object on every write and never mutates one, so holding these
    // references keeps exactly this instant while the ZIP is written.
    tables.get(table)!.push(doc as SnapshotDocument);
  }
  return tables;
}

function tableOfId(id: string): string {
  return id.replace(/^[0-9;]+/, "");
}

function downloadExport(req: IncomingMessage, res: ServerResponse, snapshotId: string) {
  requireAdmin(authenticate(req));
  const archive = exportArchives.get(snapshotId);
  if (!/^\d+$/.test(snapshotId)) throw new HttpError(400, "BadSnapshotId", "Snapshot Id did not parse to an ID.");
  if (archive === undefined) throw new HttpError(404, "ExportNotFound", `The requested export ${snapshotId} does not exist`);
  const filename = `snapshot_${basename(snapshotId)}.zip`;
  res.writeHead(200, {
    "content-type": "application/zip",
    "content-length": archive.length,
    "content-disposition": `attachment; filename="${filename}"`,
    "cache-control": "private, max-age=2592000",
  });
  if (exportFault === "truncate") {
    // A download cut short: the header promised more bytes than arrive.
    res.write(archive.subarray(0, Math.floor(archive.length / 2)), () => req.socket.destroy());
    return;
  }
  res.end(archive);
}

// ---------------------------------------------------------------------------------------------------

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url ?? "/", "http://localhost");
    const endpoint = ENDPOINT_KINDS[url.pathname];
    if (req.method === "POST" && endpoint !== undefined) {
      await callFunction(req, res, endpoint);
    } else if (req.method === "POST" && url.pathname === "/api/export/request/zip") {
      requestExport(req, res, url);
    } else if (req.method === "GET" && url.pathname.startsWith("/api/export/zip/")) {
      downloadExport(req, res, decodeURIComponent(url.pathname.slice("/api/export/zip/".length)));
    } else if (req.method === "GET" && url.pathname === "/version") {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("local-convex-test-deployment");
    } else {
      throw new HttpError(404, "NotFound", `No route for ${req.method} ${url.pathname}`);
    }
  } catch (error) {
    if (res.headersSent) return req.socket.destroy();
    if (error instanceof HttpError) return sendJson(res, error.status, { code: error.code, message: error.message });
    process.stderr.write(`internal error: ${(error as Error).stack ?? error}\n`);
    sendJson(res, 500, { code: "InternalServerError", message: "Your request couldn't be completed. Try again later." });
  }
});
server.keepAliveTimeout = 60_000;

// The WebSocket sync protocol (what `convex.ConvexClient` and the JS `ConvexClient` speak, at /api/<version>/sync)
// is not served. An upgrade request is refused at once with an HTTP error that says so, and the server's stderr
// says it once: the clients do not show the answer (they retry, hang or fail with "channel closed").
const SYNC_REFUSAL = "This local Convex test deployment speaks Convex's HTTP API only (POST /api/query, /api/mutation, " +
  "/api/action, /api/function, as ConvexHttpClient calls it): the WebSocket sync protocol (ConvexClient) is not served.";
let syncRefused = false;
server.on("upgrade", (req, socket) => {
  if (!syncRefused) process.stderr.write(`refused a WebSocket client at ${req.url}: ${SYNC_REFUSAL}\n`);
  syncRefused = true;
  const body = JSON.stringify({ code: "SyncNotSupported", message: SYNC_REFUSAL });
  socket.end(
    `HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `connection: close\r\n\r\n${body}`,
  );
});

server.listen(Number(options.port), options.host, () => {
  const address = server.address();
  const port = typeof address === "object" && address ? address.port : Number(options.port);
  const documents = Object.keys(convexGlobal!.components[""].db._documents).length;
  process.stdout.write(JSON.stringify({ event: "ready", url: `http://${options.host}:${port}`, documents }) + "\n");
});

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
