/**
 * Raw ranges (`AttnMaskSpec.fromRanges`, plain flex keys) checked and copied into builder slices: ranges
 * integer, in bounds and `start ≤ end`, types as names or numbers, totals at least the largest range end.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../core/errors.ts";
import { attnTypeToMaskType, type MaskType, maskTypeToAttnType } from "../core/types.ts";
import { parseWith, z } from "../core/schema.ts";
import { checkArrayLike, checkInteger, INT32_MAX } from "./checks.ts";
import { SliceList } from "./slice_list.ts";

/** A half-open range `[start, end)`. */
type Range = readonly [number, number];

/** Raw ranges as `AttnMaskSpec.fromRanges` takes them, the types under the name `typesField`. */
export interface RawRanges {
  /** Query range of each slice. */
  readonly qRanges: unknown;
  /** Key range of each slice. */
  readonly kRanges: unknown;
  /** Total query tokens; default: the largest query range end. */
  readonly totalSeqlenQ?: unknown;
  /** Total key tokens; default: the largest key range end. */
  readonly totalSeqlenK?: unknown;
}

/** Top-level keys of a ranges object (elements are checked by hand below: they are the hot loop). */
function rangesSchema(typesField: string) {
  return z.strictObject({
    qRanges: z.unknown(),
    kRanges: z.unknown(),
    [typesField]: z.unknown(),
    totalSeqlenQ: z.unknown().optional(),
    totalSeqlenK: z.unknown().optional(),
  });
}

const RANGES_SCHEMAS = new Map<string, ReturnType<typeof rangesSchema>>();

/**
 * Checks `ranges` (naming the types field `typesField` in errors) and copies them into slices, in the
 * given order, empty ones included.
 */
export function parseRanges(
  ranges: RawRanges,
  typesField: string,
): { slices: SliceList; totalQ: number; totalK: number } {
  let schema = RANGES_SCHEMAS.get(typesField);
  if (schema === undefined) RANGES_SCHEMAS.set(typesField, schema = rangesSchema(typesField));
  parseWith(schema, ranges, {
    field: typesField === "maskTypes" ? "" : "key",
    valueName: "ranges",
    owner: typesField === "maskTypes" ? "AttnMaskSpec.fromRanges" : "a plain flex key",
    fix: `pass { qRanges, kRanges, ${typesField}, totalSeqlenQ, totalSeqlenK }`,
  });
  const rangesFix = "pass an array of [start, end) pairs, one per slice";
  const qList = checkArrayLike(ranges.qRanges, "qRanges", rangesFix);
  const kList = checkArrayLike(ranges.kRanges, "kRanges", rangesFix);
  const typeList = checkArrayLike(
    (ranges as unknown as Record<string, unknown>)[typesField],
    typesField,
    "pass one mask type per slice",
  );
  const count = qList.length;
  if (kList.length !== count || typeList.length !== count) {
    throw new MagiAttnInputError(
      kList.length !== count ? "kRanges" : typesField,
      `has ${kList.length !== count ? kList.length : typeList.length} entries but qRanges has ${count}`,
      "give one query range, one key range and one type per slice",
    );
  }
  const copyRanges = (list: ArrayLike<unknown>, field: string): Range[] => {
    const copies = new Array<Range>(list.length);
    for (let index = 0; index < list.length; index++) {
      const pair = list[index];
      if (!Array.isArray(pair) || pair.length !== 2) {
        throw new MagiAttnInputError(
          `${field}[${index}]`,
          `is ${describeValue(pair)}, not a pair`,
          "write it as [start, end]",
        );
      }
      const start = checkInteger(
        pair[0],
        `${field}[${index}][0]`,
        0,
        INT32_MAX,
        "give a non-negative integer start",
      );
      const end = checkInteger(
        pair[1],
        `${field}[${index}][1]`,
        0,
        INT32_MAX,
        "give a non-negative integer end",
      );
      if (end < start) {
        throw new MagiAttnInputError(
          `${field}[${index}]`,
          `is [${start}, ${end}): end < start`,
          "give start ≤ end",
        );
      }
      copies[index] = [start, end];
    }
    return copies;
  };
  const qRanges = copyRanges(qList, "qRanges");
  const kRanges = copyRanges(kList, "kRanges");
  const types = new Array<number>(count);
  for (let index = 0; index < count; index++) {
    const value = typeList[index];
    const field = `${typesField}[${index}]`;
    types[index] = typeof value === "number"
      ? maskTypeToAttnType(attnTypeToMaskType(value, field), field)
      : maskTypeToAttnType(value as MaskType, field);
  }
  const checkTotal = (value: unknown, field: string, list: Range[], rangeField: string): number => {
    let maxEnd = 0;
    for (const range of list) maxEnd = Math.max(maxEnd, range[1]);
    if (value === undefined) return maxEnd;
    const total = checkInteger(value, field, 0, INT32_MAX, "give the token count as a non-negative integer");
    if (maxEnd > total) {
      const index = list.findIndex((range) => range[1] > total);
      throw new MagiAttnInputError(
        `${rangeField}[${index}]`,
        `is [${list[index][0]}, ${list[index][1]}), past ${field} = ${total}`,
        `keep ranges inside [0, ${total}) or raise ${field}`,
      );
    }
    return total;
  };
  const totalQ = checkTotal(ranges.totalSeqlenQ, "totalSeqlenQ", qRanges, "qRanges");
  const totalK = checkTotal(ranges.totalSeqlenK, "totalSeqlenK", kRanges, "kRanges");
  const slices = new SliceList();
  for (let index = 0; index < count; index++) {
    slices.push(qRanges[index][0], qRanges[index][1], kRanges[index][0], kRanges[index][1], types[index]);
  }
  return { slices, totalQ, totalK };
}
