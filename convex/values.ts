// Value helpers shared by the migration's functions (not a Convex function module: it exports no functions).
import type { Value } from "convex/values";

/** Deep equality of Convex values, as stored: the precondition and idempotency checks rest on it.
 * As helpers/connection/values.py `equal`: int64 (bigint) never equals float64 (number), -0 is not 0, NaN equals NaN. */
export function valuesEqual(a: Value | undefined, b: Value | undefined): boolean {
  if (typeof a === "number" && typeof b === "number") return Object.is(a, b);
  if (a === b) return true; // bigints compare by value; a bigint is never === a number
  if (a === null || b === null || a === undefined || b === undefined) return false;
  if (a instanceof ArrayBuffer || b instanceof ArrayBuffer) {
    if (!(a instanceof ArrayBuffer && b instanceof ArrayBuffer) || a.byteLength !== b.byteLength) return false;
    const x = new Uint8Array(a);
    const y = new Uint8Array(b);
    return x.every((byte, i) => byte === y[i]);
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!(Array.isArray(a) && Array.isArray(b)) || a.length !== b.length) return false;
    return a.every((item, i) => valuesEqual(item, b[i]));
  }
  if (typeof a === "object" && typeof b === "object") {
    const ra = a as Record<string, Value | undefined>;
    const rb = b as Record<string, Value | undefined>;
    const keysA = Object.keys(ra).filter((k) => ra[k] !== undefined);
    const keysB = Object.keys(rb).filter((k) => rb[k] !== undefined);
    return keysA.length === keysB.length && keysA.every((k) => valuesEqual(ra[k], rb[k]));
  }
  return false;
}
