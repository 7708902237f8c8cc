/**
 * Argument checks shared by the mask builders: each raises a {@linkcode MagiAttnInputError} naming the
 * field and the fix.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../core/errors.ts";

/** Largest token count a range may reach: the kernels take int32 indices. */
export const INT32_MAX = 2147483647;

/** Raises the standard error for a value that must be an integer in a range. */
export function checkInteger(value: unknown, field: string, min: number, max: number, fix: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    const what = typeof value === "number" && Number.isInteger(value)
      ? `is ${value}, outside [${min}, ${max}]`
      : `is ${describeValue(value)}, not an integer`;
    throw new MagiAttnInputError(
      field,
      what,
      typeof value === "bigint" ? `${fix} (as a number: convert bigints with Number(...))` : fix,
    );
  }
  return value;
}

/** Checks that `value` is an array (or, where allowed, a typed array) and returns it. */
export function checkArrayLike(value: unknown, field: string, fix: string): ArrayLike<unknown> {
  if (Array.isArray(value) || (ArrayBuffer.isView(value) && !(value instanceof DataView))) {
    return value as ArrayLike<unknown>;
  }
  throw new MagiAttnInputError(field, `is ${describeValue(value)}, not an array`, fix);
}

/** Validates a list of document lengths; returns them as numbers with their sum. */
export function checkSeqlens(value: unknown, field: string): { seqlens: number[]; total: number } {
  const list = checkArrayLike(value, field, "pass an array of non-negative integer document lengths");
  const seqlens = new Array<number>(list.length);
  let total = 0;
  for (let index = 0; index < list.length; index++) {
    const length = checkInteger(
      list[index],
      `${field}[${index}]`,
      0,
      INT32_MAX,
      "give each document length as a non-negative integer",
    );
    total += length;
    if (total > INT32_MAX) {
      throw new MagiAttnInputError(
        field,
        `sums to more than ${INT32_MAX} tokens (reached at index ${index})`,
        "split the batch: the kernels index tokens with int32",
      );
    }
    seqlens[index] = length;
  }
  return { seqlens, total };
}
