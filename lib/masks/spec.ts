/**
 * Attention mask specifications: an immutable list of slices `[qRange, kRange, maskType]` over a packed
 * sequence, with builders for the common masks (causal, full, packed documents, sliding windows, prefix
 * trees, prefix-LM, block-causal, raw ranges). {@linkcode compileFlexKey} turns a spec into the flex key
 * the kernels run.
 *
 * Builders drop empty slices (a zero-length document, an empty prefix) instead of emitting them: an empty
 * slice covers no cell, so the mask is the same and the key is shorter. {@linkcode AttnMaskSpec.fromRanges}
 * keeps what it is given (empty slices included); the compiler drops them.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../core/errors.ts";
import { AttnType, MASK_TYPE_NAMES, type MaskType } from "../core/types.ts";
import { checkArrayLike, checkInteger, checkSeqlens, INT32_MAX } from "./checks.ts";
import { parseWith, strictParser, z } from "../core/schema.ts";
import { sliceFingerprint } from "./fingerprint.ts";
import { parseRanges } from "./ranges.ts";
import { SliceList } from "./slice_list.ts";
import { checkPrefixTree, prefixTreeSegments } from "./prefix_tree.ts";

/** A half-open range `[start, end)`. */
export type Range = readonly [number, number];

/** Input of {@linkcode AttnMaskSpec.fromRanges}. */
export interface AttnMaskRanges {
  /** Query ranges `[start, end)`, one per slice. */
  qRanges: readonly (readonly [number, number])[];
  /** Key ranges `[start, end)`, one per slice. */
  kRanges: readonly (readonly [number, number])[];
  /** Type of each slice: a {@linkcode MaskType} name or an {@linkcode AttnType} number. */
  maskTypes: readonly (MaskType | number)[];
  /** Query tokens; default: the largest query range end. */
  totalSeqlenQ?: number;
  /** Key tokens; default: the largest key range end. */
  totalSeqlenK?: number;
}

/** Options of {@linkcode AttnMaskSpec.varlen} and {@linkcode AttnMaskSpec.fromCuSeqlens}. */
export interface VarlenOptions {
  /** Causal (default) or full attention inside each document. */
  causal?: boolean;
}

/** A sliding window in FlashAttention's `window_size` meaning; −1 means unbounded on that side. */
export interface SlidingWindowOptions {
  /** Keys visible before the query: key j is visible from query i only if `j ≥ i − left`. */
  left: number;
  /** Keys visible after the query: key j is visible from query i only if `j ≤ i + right`. */
  right: number;
}

const parseVarlenOptions = strictParser(z.strictObject({ causal: z.boolean().optional() }), {
  field: "options",
  owner: "AttnMaskSpec.varlen / .fromCuSeqlens",
  fix: "pass { causal: true } or { causal: false }",
  fixes: { causal: "pass true (causal documents, the default) or false (full attention)" },
});

const windowBound = z.int().min(-1).max(INT32_MAX);

const WINDOW_SCHEMA = z.strictObject({ left: windowBound, right: windowBound });

const WINDOW_WORDING = {
  field: "window",
  owner: "AttnMaskSpec.slidingWindow",
  fix: "pass { left, right } with −1 for an unbounded side, e.g. { left: 127, right: 0 }",
  fixes: {
    left: "give a non-negative integer, or −1 for unbounded",
    right: "give a non-negative integer, or −1 for unbounded",
  },
};

function sameInts(a: Int32Array, b: Int32Array): boolean {
  for (let index = 0; index < a.length; index++) if (a[index] !== b[index]) return false;
  return true;
}

/** Marks calls of the constructor that come from this module's builders. */
const CONSTRUCT = Symbol("AttnMaskSpec.construct");

const { FULL, CAUSAL, INVCAUSAL, BICAUSAL } = AttnType;

/** Builds a spec from validated slices (set by the class's static block, which may call the constructor). */
let createSpec: (slices: SliceList, totalSeqlenQ: number, totalSeqlenK: number) => AttnMaskSpec;

/** Reads a spec's flat arrays (set by the class's static block). */
let readSpec: (spec: AttnMaskSpec) => { q: Int32Array; k: Int32Array; types: Int32Array };

/** Brand check (set by the class's static block): built by this copy's builders, not just its prototype. */
let hasSpecBrand: (value: object) => boolean;

/**
 * Whether `value` is an {@linkcode AttnMaskSpec} built by this copy of the module's builders. A brand
 * check, not `instanceof`: an object made with `Object.create(AttnMaskSpec.prototype)` is not a spec.
 */
export function isAttnMaskSpec(value: unknown): value is AttnMaskSpec {
  return typeof value === "object" && value !== null && hasSpecBrand(value);
}

/**
 * Returns `value` if it is a real {@linkcode AttnMaskSpec}; otherwise throws a
 * {@linkcode MagiAttnInputError} naming `field` that says what it is instead: not a spec at all, an
 * object carrying the prototype without a builder, or a spec from a second copy of magi-attn.
 */
export function checkAttnMaskSpec(value: unknown, field: string, fix: string): AttnMaskSpec {
  if (isAttnMaskSpec(value)) return value;
  if (value instanceof AttnMaskSpec) {
    throw new MagiAttnInputError(
      field,
      "has AttnMaskSpec's prototype but was not built by an AttnMaskSpec builder (it holds no slices)",
      fix,
    );
  }
  let className: unknown;
  try {
    className = (value as { constructor?: { name?: unknown } } | null)?.constructor?.name;
  } catch {
    className = undefined;
  }
  if (className === "AttnMaskSpec") {
    throw new MagiAttnInputError(
      field,
      "is an AttnMaskSpec from another copy of magi-attn (the module was loaded twice, e.g. from two URLs " +
        "or two versions), which this copy cannot read",
      "import AttnMaskSpec and the functions you pass it to from one copy of magi-attn (one import URL and " +
        "version)",
    );
  }
  throw new MagiAttnInputError(field, `is ${describeValue(value)}, not an AttnMaskSpec`, fix);
}

/** Flat slices of a spec, as fresh typed arrays. */
export interface SpecSliceArrays {
  /** Query ranges `s0, e0, s1, e1, …` (length 2N). */
  qRanges: Int32Array;
  /** Key ranges, paired with `qRanges` (length 2N). */
  kRanges: Int32Array;
  /** {@linkcode AttnType} of each slice (length N). */
  attnTypes: Int32Array;
}

/**
 * Internal (for the flex key compiler; not re-exported by mod.ts): the spec's own flat arrays, shared,
 * not copied. They must never be mutated or handed out: the spec is immutable (keys get copies).
 */
export function sharedSpecArrays(spec: AttnMaskSpec): { q: Int32Array; k: Int32Array; types: Int32Array } {
  return readSpec(spec);
}

/** A copy of each spec's arrays for the keys compiled from it, made on the first compile. */
const keyStorage = new WeakMap<AttnMaskSpec, { q: Int32Array; k: Int32Array; types: Int32Array }>();

/**
 * Internal (for the flex key compiler): arrays a key compiled from `spec` may keep: a copy of the spec's
 * slices made once per spec and shared by every key compiled from it, never the spec's own storage (so
 * writing into a key cannot change the spec). Made once so that recompiling a spec allocates nothing.
 */
export function keyArraysOf(spec: AttnMaskSpec): { q: Int32Array; k: Int32Array; types: Int32Array } {
  let arrays = keyStorage.get(spec);
  if (arrays === undefined) {
    const { q, k, types } = readSpec(spec);
    arrays = { q: q.slice(), k: k.slice(), types: types.slice() };
    keyStorage.set(spec, arrays);
  }
  return arrays;
}

/**
 * A spec's slices as flat typed arrays, in the spec's order: fresh copies the caller owns (much cheaper
 * than walking the tuple lists for large specs).
 */
export function specSliceArrays(spec: AttnMaskSpec): SpecSliceArrays {
  const { q, k, types } = readSpec(spec);
  return { qRanges: q.slice(), kRanges: k.slice(), attnTypes: types.slice() };
}

function tuplesOf(flat: Int32Array): readonly Range[] {
  const tuples = new Array<Range>(flat.length >> 1);
  for (let index = 0; index < tuples.length; index++) {
    tuples[index] = Object.freeze([flat[2 * index], flat[2 * index + 1]] as const);
  }
  return Object.freeze(tuples);
}

/**
 * An immutable attention mask over a packed sequence: slice n makes the cells of
 * `qRanges[n] × kRanges[n]` allowed by `maskTypes[n]` visible (see the FFA semantics: `"causal"` is
 * bottom-right aligned, `"inv_causal"` top-left, `"bi_causal"` both). Build one with the static builders;
 * compile it with `compileFlexKey`. Instances are frozen; the range and type lists they hand out are
 * frozen too (built on first access, then kept).
 *
 * @example Packed documents, a window, a prefix tree
 * ```ts
 * import { AttnMaskSpec } from "@magi/attn";
 *
 * const documents = AttnMaskSpec.varlen([5, 3, 4]); // three causal documents in 12 tokens
 * const window = AttnMaskSpec.slidingWindow(12, { left: 2, right: 0 }); // causal, 2 keys back
 * const rollouts = AttnMaskSpec.prefixTree([4, 2, 3], [[0, 1], [0, 2]]); // a prompt, two completions
 * console.log(documents.totalSeqlenQ, window.numSlices, rollouts.qRanges);
 * ```
 */
export class AttnMaskSpec {
  /** Query tokens of the packed sequence. */
  readonly totalSeqlenQ: number;
  /** Key tokens of the packed sequence. */
  readonly totalSeqlenK: number;
  readonly #q: Int32Array;
  readonly #k: Int32Array;
  readonly #types: Int32Array;
  #qRanges: readonly Range[] | undefined;
  #kRanges: readonly Range[] | undefined;
  #maskTypes: readonly MaskType[] | undefined;
  #fingerprint: string | undefined;

  static {
    createSpec = (slices, totalSeqlenQ, totalSeqlenK) =>
      new AttnMaskSpec(
        CONSTRUCT,
        slices.q.slice(0, 2 * slices.count),
        slices.k.slice(0, 2 * slices.count),
        slices.types.slice(0, slices.count),
        totalSeqlenQ,
        totalSeqlenK,
      );
    hasSpecBrand = (value) => #q in value;
    readSpec = (spec) => {
      checkAttnMaskSpec(
        spec,
        "spec",
        "build the mask with AttnMaskSpec.varlen / .slidingWindow / .prefixTree / .fromRanges",
      );
      return { q: spec.#q, k: spec.#k, types: spec.#types };
    };
  }

  /** Use the static builders (`AttnMaskSpec.varlen`, `.fromRanges`, …); the constructor is internal. */
  private constructor(
    token: symbol,
    q: Int32Array,
    k: Int32Array,
    types: Int32Array,
    totalSeqlenQ: number,
    totalSeqlenK: number,
  ) {
    if (token !== CONSTRUCT) {
      throw new MagiAttnInputError(
        "new AttnMaskSpec",
        "is internal",
        "build specs with AttnMaskSpec.fromRanges, .varlen, .slidingWindow, .prefixTree, …",
      );
    }
    this.#q = q;
    this.#k = k;
    this.#types = types;
    this.totalSeqlenQ = totalSeqlenQ;
    this.totalSeqlenK = totalSeqlenK;
    Object.freeze(this);
  }

  /** Query range `[start, end)` of each slice (a frozen list of frozen pairs). */
  get qRanges(): readonly Range[] {
    return (this.#qRanges ??= tuplesOf(this.#q));
  }

  /** Key range `[start, end)` of each slice (a frozen list of frozen pairs). */
  get kRanges(): readonly Range[] {
    return (this.#kRanges ??= tuplesOf(this.#k));
  }

  /** Mask type of each slice (a frozen list). */
  get maskTypes(): readonly MaskType[] {
    return (this.#maskTypes ??= Object.freeze(Array.from(this.#types, (type) => MASK_TYPE_NAMES[type])));
  }

  /** Number of slices. */
  get numSlices(): number {
    return this.#types.length;
  }

  /**
   * A stable 64-bit hash (16 hex digits, then `-` and the slice count) of the totals, ranges and types,
   * computed once. Equal specs give equal fingerprints; the slice order matters.
   */
  fingerprint(): string {
    return (this.#fingerprint ??= sliceFingerprint(
      this.totalSeqlenQ,
      this.totalSeqlenK,
      this.#q,
      this.#k,
      this.#types,
    ));
  }

  /** Whether `other` has the same totals and the same slices in the same order. O(slices). */
  equals(other: AttnMaskSpec): boolean {
    if (other === this) return true;
    if (!isAttnMaskSpec(other)) return false;
    if (
      other.#types.length !== this.#types.length || other.totalSeqlenQ !== this.totalSeqlenQ ||
      other.totalSeqlenK !== this.totalSeqlenK
    ) return false;
    return sameInts(this.#q, other.#q) && sameInts(this.#k, other.#k) && sameInts(this.#types, other.#types);
  }

  /** Plain data for JSON: `{ qRanges, kRanges, maskTypes, totalSeqlenQ, totalSeqlenK }`. */
  toJSON(): AttnMaskRanges {
    return {
      qRanges: this.qRanges,
      kRanges: this.kRanges,
      maskTypes: this.maskTypes,
      totalSeqlenQ: this.totalSeqlenQ,
      totalSeqlenK: this.totalSeqlenK,
    };
  }

  /** A short description: totals, slice count and fingerprint. */
  toString(): string {
    return `AttnMaskSpec(${this.totalSeqlenQ}x${this.totalSeqlenK}, ${this.numSlices} slices, ${this.fingerprint()})`;
  }

  /** Causal attention over `n` tokens: one CAUSAL slice `[0,n)×[0,n)` (none when n = 0). */
  static causal(n: number): AttnMaskSpec {
    const length = checkInteger(n, "n", 0, INT32_MAX, "pass the token count as a non-negative integer");
    return AttnMaskSpec.#square([length], CAUSAL, length);
  }

  /** Full (bidirectional) attention over `n` tokens: one FULL slice `[0,n)×[0,n)` (none when n = 0). */
  static full(n: number): AttnMaskSpec {
    const length = checkInteger(n, "n", 0, INT32_MAX, "pass the token count as a non-negative integer");
    return AttnMaskSpec.#square([length], FULL, length);
  }

  /**
   * Packed documents: one square slice per document, causal (default) or full. Zero-length documents are
   * allowed and produce no slice.
   */
  static varlen(seqlens: readonly number[] | ArrayLike<number>, options: VarlenOptions = {}): AttnMaskSpec {
    const { seqlens: lengths, total } = checkSeqlens(seqlens, "seqlens");
    const { causal = true } = parseVarlenOptions(options);
    return AttnMaskSpec.#square(lengths, causal ? CAUSAL : FULL, total);
  }

  /**
   * Packed documents from cumulative lengths `cu` (`cu[0] = 0`, non-decreasing; document d is
   * `[cu[d], cu[d+1])`), causal (default) or full. Empty documents produce no slice.
   */
  static fromCuSeqlens(cu: readonly number[] | ArrayLike<number>, options: VarlenOptions = {}): AttnMaskSpec {
    const list = checkArrayLike(cu, "cuSeqlens", "pass cumulative sequence lengths such as [0, 5, 12]");
    if (list.length === 0) {
      throw new MagiAttnInputError(
        "cuSeqlens",
        "is empty",
        "start it with 0, e.g. [0] for no tokens or [0, 5, 12]",
      );
    }
    const { causal = true } = parseVarlenOptions(options);
    const first = checkInteger(list[0], "cuSeqlens[0]", 0, INT32_MAX, "start the cumulative lengths at 0");
    if (first !== 0) {
      throw new MagiAttnInputError("cuSeqlens[0]", `is ${first}, not 0`, "start the cumulative lengths at 0");
    }
    const lengths = new Array<number>(list.length - 1);
    let previous = 0;
    for (let index = 1; index < list.length; index++) {
      const value = checkInteger(
        list[index],
        `cuSeqlens[${index}]`,
        0,
        INT32_MAX,
        "give cumulative lengths as non-negative integers below 2^31",
      );
      if (value < previous) {
        throw new MagiAttnInputError(
          `cuSeqlens[${index}]`,
          `is ${value}, less than cuSeqlens[${index - 1}] = ${previous}`,
          "make the cumulative lengths non-decreasing",
        );
      }
      lengths[index - 1] = value - previous;
      previous = value;
    }
    return AttnMaskSpec.#square(lengths, causal ? CAUSAL : FULL, previous);
  }

  /**
   * Sliding-window attention inside each document (a token count `n` means one document). Key j is
   * visible from query i of the same document iff `i − left ≤ j ≤ i + right`; −1 leaves that side
   * unbounded, so `{left: −1, right: 0}` is causal and `{left: −1, right: −1}` full. Each document becomes
   * at most three slices (CAUSAL rows before the left edge binds, BICAUSAL rows where both edges bind,
   * INVCAUSAL rows after the right edge stops binding, or FULL rows where neither binds).
   */
  static slidingWindow(
    seqlensOrN: number | readonly number[] | ArrayLike<number>,
    window: SlidingWindowOptions,
  ): AttnMaskSpec {
    let lengths: number[], total: number;
    if (typeof seqlensOrN === "number") {
      total = checkInteger(
        seqlensOrN,
        "seqlensOrN",
        0,
        INT32_MAX,
        "pass a token count or an array of lengths",
      );
      lengths = [total];
    } else {
      ({ seqlens: lengths, total } = checkSeqlens(seqlensOrN, "seqlensOrN"));
    }
    const { left, right } = parseWith(WINDOW_SCHEMA, window, WINDOW_WORDING);
    const slices = new SliceList();
    let offset = 0;
    for (const length of lengths) {
      // A side that reaches the document's edge from every row never binds: treat it as unbounded.
      const reachLeft = left < 0 || left >= length - 1 ? length : left;
      const reachRight = right < 0 || right >= length - 1 ? length : right;
      const rightBindsUntil = length - reachRight; // rows [0, this) have i + right ≤ length − 1
      if (reachLeft < rightBindsUntil) {
        // Rows [0, L): only the right edge binds; [L, S − R): both; [S − R, S): only the left edge.
        slices.pushNonEmpty(offset, offset + reachLeft, offset, offset + reachLeft + reachRight, CAUSAL);
        slices.pushNonEmpty(offset + reachLeft, offset + rightBindsUntil, offset, offset + length, BICAUSAL);
        const leftStart = offset + rightBindsUntil - reachLeft;
        slices.pushNonEmpty(offset + rightBindsUntil, offset + length, leftStart, offset + length, INVCAUSAL);
      } else {
        // The window spans the document from some rows: right-bound rows, free rows, left-bound rows.
        slices.pushNonEmpty(offset, offset + rightBindsUntil, offset, offset + length, CAUSAL);
        slices.pushNonEmpty(offset + rightBindsUntil, offset + reachLeft, offset, offset + length, FULL);
        slices.pushNonEmpty(offset + reachLeft, offset + length, offset, offset + length, INVCAUSAL);
      }
      offset += length;
    }
    return createSpec(slices, total, total);
  }

  /**
   * A prefix tree (e.g. RL rollouts sharing a prompt): node n has `nodeLengths[n]` tokens, laid out in
   * node order; each sample path lists node indices from a root to a leaf. A token sees the earlier tokens
   * of its own node (causal) and every token of the nodes above it on its path (full). A node must have the
   * same parent in every path, several roots (a forest) are allowed, and every node with tokens must be on
   * some path (a node without tokens attends to nothing and needs none).
   *
   * The slices grow with the nodes, not their tokens: a chain of nodes, each laid out right after its
   * parent, becomes one causal slice (a chain of 5,000 one-token nodes is `causal(5000)`), joined with the
   * ancestors' tokens right before it; every other contiguous run of ancestor tokens is one full slice.
   */
  static prefixTree(
    nodeLengths: readonly number[] | ArrayLike<number>,
    samplePaths: readonly (readonly number[])[],
  ): AttnMaskSpec {
    const tree = checkPrefixTree(nodeLengths, samplePaths);
    const slices = new SliceList();
    for (const segment of prefixTreeSegments(tree)) {
      const { start, end, ancestorRuns } = segment;
      // Runs end below the segment or start above it; the one ending at its start joins the causal slice.
      let causalKeyStart = start;
      for (let run = 0; run < ancestorRuns.length; run += 2) {
        if (ancestorRuns[run + 1] === start) causalKeyStart = ancestorRuns[run];
        else if (ancestorRuns[run] < start) {
          slices.push(start, end, ancestorRuns[run], ancestorRuns[run + 1], FULL);
        }
      }
      slices.push(start, end, causalKeyStart, end, CAUSAL);
      for (let run = 0; run < ancestorRuns.length; run += 2) {
        if (ancestorRuns[run] > start) {
          slices.push(start, end, ancestorRuns[run], ancestorRuns[run + 1], FULL);
        }
      }
    }
    return createSpec(slices, tree.total, tree.total);
  }

  /** Prefix-LM over `n` tokens: the first `prefixLen` see each other fully, the rest causally. */
  static prefixLM(prefixLen: number, n: number): AttnMaskSpec {
    const total = checkInteger(n, "n", 0, INT32_MAX, "pass the token count as a non-negative integer");
    const prefix = checkInteger(
      prefixLen,
      "prefixLen",
      0,
      total,
      `give a prefix length between 0 and n = ${total}`,
    );
    const slices = new SliceList();
    slices.pushNonEmpty(0, prefix, 0, prefix, FULL);
    slices.pushNonEmpty(prefix, total, 0, total, CAUSAL);
    return createSpec(slices, total, total);
  }

  /**
   * Block-causal over `n` tokens: block i `[ib, (i+1)b)` sees keys `[0, (i+1)b)` fully; the last may be
   * short. Like {@linkcode AttnMaskSpec.prefixLM}, the length comes second, and a block longer than a
   * non-empty sequence is refused (most likely swapped arguments; a single block is `AttnMaskSpec.full(n)`).
   */
  static blockCausal(blockSize: number, n: number): AttnMaskSpec {
    const total = checkInteger(n, "n", 0, INT32_MAX, "pass the token count as a non-negative integer");
    const block = checkInteger(blockSize, "blockSize", 1, INT32_MAX, "give a positive integer block size");
    if (total > 0 && block > total) {
      throw new MagiAttnInputError(
        "blockSize",
        `is ${block}, longer than the ${total} tokens of n (the arguments are blockCausal(blockSize, n): ` +
          "swapped?)",
        `give a block size between 1 and n = ${total}, e.g. blockCausal(${total}, ${block}) if they were ` +
          "swapped, or AttnMaskSpec.full(n) for one block",
      );
    }
    const count = Math.ceil(total / block);
    const slices = new SliceList();
    for (let index = 0; index < count; index++) {
      const start = index * block, end = Math.min(total, start + block);
      slices.push(start, end, 0, end, FULL);
    }
    return createSpec(slices, total, total);
  }

  /**
   * A spec from raw slices. Types may be names (`"causal"`) or {@linkcode AttnType} numbers (1). Ranges
   * must be integer, in bounds and `start ≤ end`; slices are kept in the given order, empty ones included
   * (area-disjointness is checked when compiling). The input is copied, never changed.
   */
  static fromRanges(ranges: AttnMaskRanges): AttnMaskSpec {
    return specFromRangesNamed(ranges, "maskTypes");
  }

  /** One square slice per document of the given lengths; empty documents skipped. */
  static #square(lengths: readonly number[], type: number, total: number): AttnMaskSpec {
    const slices = new SliceList();
    let offset = 0;
    for (const length of lengths) {
      slices.pushNonEmpty(offset, offset + length, offset, offset + length, type);
      offset += length;
    }
    return createSpec(slices, total, total);
  }
}

/**
 * Internal (not re-exported by mod.ts): {@linkcode AttnMaskSpec.fromRanges} naming the types field
 * `typesField` in errors; the flex key compiler calls it `attnTypeMap`.
 */
export function specFromRangesNamed(ranges: AttnMaskRanges, typesField: string): AttnMaskSpec {
  const { slices, totalQ, totalK } = parseRanges(ranges, typesField);
  return createSpec(slices, totalQ, totalK);
}
