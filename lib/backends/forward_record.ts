/**
 * What each forward computed, remembered with the `lse` it returned, so that a backward given that `lse`
 * can check it differentiates the same function (same scale, softcap and mask) instead of silently
 * returning the gradients of another one.
 * @module
 */

import { MagiAttnInputError } from "../core/errors.ts";
import type { FlexKey } from "../core/types.ts";

/** The parts of a forward call that define the function its `lse` belongs to. */
export interface ForwardRecord {
  /** The resolved logit scale. */
  readonly softmaxScale: number;
  /** The resolved softcap (0 = off). */
  readonly softcap: number;
  /** The compiled key the forward ran. */
  readonly key: FlexKey;
}

/** Keyed by the lse tensor object: a record lives exactly as long as its lse, and never leaks. */
const records = new WeakMap<object, ForwardRecord>();

/** Remembers what the forward that returned `lse` computed. */
export function recordForward(lse: object, record: ForwardRecord): void {
  records.set(lse, record);
}

function sameInt32(a: Int32Array, b: Int32Array): boolean {
  if (a.length !== b.length) return false;
  for (let index = 0; index < a.length; index++) if (a[index] !== b[index]) return false;
  return true;
}

function sameKey(a: FlexKey, b: FlexKey): boolean {
  return a === b || (a.totalQ === b.totalQ && a.totalK === b.totalK && sameInt32(a.qRanges, b.qRanges) &&
    sameInt32(a.kRanges, b.kRanges) && sameInt32(a.attnTypeMap, b.attnTypeMap));
}

/**
 * Throws a {@linkcode MagiAttnInputError} when `lse` came from a forward of this process that ran with
 * another scale, softcap or key than the backward is about to use. An lse with no record (rebuilt by the
 * caller, copied, or from another process) cannot be checked and passes.
 */
export function checkBackwardMatchesForward(lse: object, backward: ForwardRecord): void {
  const forward = records.get(lse);
  if (forward === undefined) return;
  const differs = (field: string, what: string, was: number, is: number, option: string): never => {
    throw new MagiAttnInputError(
      field,
      `is ${is} but the forward that returned \`lse\` ran with ${what} ${was}, so these would be the ` +
        "gradients of another function",
      `pass the backward the forward's options ({ ${option}: ${was} })`,
    );
  };
  if (forward.softcap !== backward.softcap) {
    differs("opts.softcap", "softcap", forward.softcap, backward.softcap, "softcap");
  }
  if (forward.softmaxScale !== backward.softmaxScale) {
    differs("opts.softmaxScale", "softmaxScale", forward.softmaxScale, backward.softmaxScale, "softmaxScale");
  }
  if (!sameKey(forward.key, backward.key)) {
    throw new MagiAttnInputError(
      "key",
      `(${backward.key.attnTypeMap.length} slices, area ${backward.key.area}) is not the key the forward ` +
        `that returned \`lse\` ran (${forward.key.attnTypeMap.length} slices, area ${forward.key.area})`,
      "pass the backward the same key (or spec) as its forward",
    );
  }
}
