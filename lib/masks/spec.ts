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

import { MagiAttnInputError } from "../core/errors.ts";
import type { AttnTypeValue, MaskType } from "../core/types.ts";

/** Largest token count a range may reach: the kernels take int32 indices. */
const INT32_MAX = 2147483647;

/** A half-open range `[start, end)`. */
export type Range = readonly [number, number];

const MASK_TYPES: readonly MaskType[] = Object.freeze(["full", "causal", "inv_causal", "bi_causal"]);

/** The numeric {@linkcode AttnType} of a mask type name (`"causal"` → 1). Throws for an unknown name. */
export function maskTypeToAttnType(maskType: MaskType, field = "maskType"): AttnTypeValue {
  const index = MASK_TYPES.indexOf(maskType);
  if (index < 0) {
    throw new MagiAttnInputError(
      field,
      `is ${describeValue(maskType)}, not a mask type`,
      `use one of ${MASK_TYPES.map((name) => `"${name}"`).join(", ")} (or the AttnType numbers 0-3)`,
    );
  }
  return index as AttnTypeValue;
}

/** The mask type name of a numeric {@linkcode AttnType} (1 → `"causal"`). Throws for an unknown value. */
export function attnTypeToMaskType(attnType: number, field = "attnType"): MaskType {
  if (!Number.isInteger(attnType) || attnType < 0 || attnType > 3) {
    throw new MagiAttnInputError(
      field,
      `is ${describeValue(attnType)}, not an attention type`,
      "use 0 (FULL), 1 (CAUSAL), 2 (INVCAUSAL) or 3 (BICAUSAL)",
    );
  }
  return MASK_TYPES[attnType];
}

/** Short, safe rendering of an offending value for error messages. */
export function describeValue(value: unknown): string {
  if (typeof value === "number") return Number.isNaN(value) ? "NaN" : String(value);
  if (typeof value === "string") return JSON.stringify(value.length > 40 ? value.slice(0, 40) + "…" : value);
  if (value === null || value === undefined || typeof value === "boolean") return String(value);
  if (typeof value === "bigint") return `${value}n (a bigint)`;
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  return `a ${typeof value === "object" ? (value.constructor?.name ?? "object") : typeof value}`;
}

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

/** Token layout of a prefix tree, from {@linkcode prefixTreeLayout}. */
export interface PrefixTreeLayout {
  /** Per sample, the `[start, end)` token ranges of the nodes of its path, root first. */
  sampleTokenRanges: [number, number][][];
  /** Position id of every token: a node's positions start at the summed lengths of its ancestors. */
  positionIds: Int32Array;
}

/** Raises the standard error for a value that must be an integer in a range. */
function checkInteger(value: unknown, field: string, min: number, max: number, fix: string): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    const what = typeof value === "number" && Number.isInteger(value)
      ? `is ${value}, outside [${min}, ${max}]`
      : `is ${describeValue(value)}, not an integer`;
    throw new MagiAttnInputError(field, what, fix);
  }
  return value;
}

/** Checks that `value` is an array (or, where allowed, a typed array) and returns it. */
function checkArrayLike(value: unknown, field: string, fix: string): ArrayLike<unknown> {
  if (Array.isArray(value) || (ArrayBuffer.isView(value) && !(value instanceof DataView))) {
    return value as ArrayLike<unknown>;
  }
  throw new MagiAttnInputError(field, `is ${describeValue(value)}, not an array`, fix);
}

function checkOptions(value: unknown, field: string, fix: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw new MagiAttnInputError(field, `is ${describeValue(value)}, not an options object`, fix);
  }
  return value as Record<string, unknown>;
}

function checkBoolean(value: unknown, field: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") {
    throw new MagiAttnInputError(field, `is ${describeValue(value)}, not a boolean`, "pass true or false");
  }
  return value;
}

/** Validates a list of document lengths; returns them as numbers with their sum. */
function checkSeqlens(value: unknown, field: string): { seqlens: number[]; total: number } {
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

/** FNV-style 32-bit mixing of one word into a running hash lane. */
function mixWord(hash: number, word: number, multiplier: number): number {
  let mixed = Math.imul(word | 0, multiplier);
  mixed = (mixed << 15) | (mixed >>> 17);
  mixed = Math.imul(mixed, 0x1b873593);
  hash ^= mixed;
  hash = (hash << 13) | (hash >>> 19);
  return (Math.imul(hash, 5) + 0xe6546b64) | 0;
}

function finishLane(hash: number, length: number): number {
  hash ^= length;
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

function sameInts(a: Int32Array, b: Int32Array): boolean {
  for (let index = 0; index < a.length; index++) if (a[index] !== b[index]) return false;
  return true;
}

function hex8(value: number): string {
  return value.toString(16).padStart(8, "0");
}

/** Marks calls of the constructor that come from this module's builders. */
const CONSTRUCT = Symbol("AttnMaskSpec.construct");

/**
 * Slices collected by a builder in growable flat typed arrays. Specs keep flat arrays, not tuples: the
 * compiler reads them in one cheap pass (walking frozen tuples is an order of magnitude slower in V8).
 */
class SliceList {
  q: Int32Array = new Int32Array(32);
  k: Int32Array = new Int32Array(32);
  types: Int32Array = new Int32Array(16);
  count = 0;

  /** Appends slice `[qs, qe) × [ks, ke)` of AttnType `type`. */
  push(qs: number, qe: number, ks: number, ke: number, type: number): void {
    if (this.count === this.types.length) this.#grow();
    const index = this.count++;
    this.q[2 * index] = qs;
    this.q[2 * index + 1] = qe;
    this.k[2 * index] = ks;
    this.k[2 * index + 1] = ke;
    this.types[index] = type;
  }

  /** Appends the slice unless it is empty. */
  pushNonEmpty(qs: number, qe: number, ks: number, ke: number, type: number): void {
    if (qs < qe && ks < ke) this.push(qs, qe, ks, ke, type);
  }

  #grow(): void {
    const grow = (array: Int32Array): Int32Array => {
      const larger = new Int32Array(array.length * 2);
      larger.set(array);
      return larger;
    };
    this.q = grow(this.q);
    this.k = grow(this.k);
    this.types = grow(this.types);
  }
}

const FULL = 0, CAUSAL = 1, INVCAUSAL = 2, BICAUSAL = 3;

/** Builds a spec from validated slices (set by the class's static block, which may call the constructor). */
let createSpec: (slices: SliceList, totalSeqlenQ: number, totalSeqlenK: number) => AttnMaskSpec;

/** Reads a spec's flat arrays (set by the class's static block). */
let readSpec: (spec: AttnMaskSpec) => { q: Int32Array; k: Int32Array; types: Int32Array };

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
 * not copied. They must never be mutated: the spec is immutable and compiled keys may share them.
 */
export function sharedSpecArrays(spec: AttnMaskSpec): { q: Int32Array; k: Int32Array; types: Int32Array } {
  return readSpec(spec);
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
    readSpec = (spec) => {
      if (!(spec instanceof AttnMaskSpec)) {
        throw new MagiAttnInputError(
          "spec",
          `is ${describeValue(spec)}, not an AttnMaskSpec`,
          "build the mask with AttnMaskSpec.varlen / .slidingWindow / .prefixTree / .fromRanges",
        );
      }
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
    return (this.#maskTypes ??= Object.freeze(Array.from(this.#types, (type) => MASK_TYPES[type])));
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
    if (this.#fingerprint !== undefined) return this.#fingerprint;
    const count = this.#types.length, q = this.#q, k = this.#k, types = this.#types;
    // Two independent 32-bit lanes over: totals, count, then (qs, qe, ks, ke, type) per slice.
    let laneA = 0x9747b28c, laneB = 0x2545f491;
    const header = [this.totalSeqlenQ, this.totalSeqlenK, count];
    for (const word of header) {
      laneA = mixWord(laneA, word, 0xcc9e2d51);
      laneB = mixWord(laneB, word ^ 0x5bd1e995, 0x27d4eb2f);
    }
    for (let index = 0; index < count; index++) {
      const w0 = q[2 * index], w1 = q[2 * index + 1], w2 = k[2 * index], w3 = k[2 * index + 1];
      const w4 = types[index];
      laneA = mixWord(
        mixWord(
          mixWord(mixWord(mixWord(laneA, w0, 0xcc9e2d51), w1, 0xcc9e2d51), w2, 0xcc9e2d51),
          w3,
          0xcc9e2d51,
        ),
        w4,
        0xcc9e2d51,
      );
      laneB = mixWord(
        mixWord(
          mixWord(
            mixWord(mixWord(laneB, w0 ^ 0x5bd1e995, 0x27d4eb2f), w1 ^ 0x5bd1e995, 0x27d4eb2f),
            w2 ^ 0x5bd1e995,
            0x27d4eb2f,
          ),
          w3 ^ 0x5bd1e995,
          0x27d4eb2f,
        ),
        w4 ^ 0x5bd1e995,
        0x27d4eb2f,
      );
    }
    this.#fingerprint = `${hex8(finishLane(laneA, count))}${hex8(finishLane(laneB, count))}-${count}`;
    return this.#fingerprint;
  }

  /** Whether `other` has the same totals and the same slices in the same order. O(slices). */
  equals(other: AttnMaskSpec): boolean {
    if (other === this) return true;
    if (!(other instanceof AttnMaskSpec)) return false;
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
    const opts = checkOptions(options, "options", "pass { causal: true } or { causal: false }");
    const causal = checkBoolean(opts.causal, "options.causal", true);
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
    const opts = checkOptions(options, "options", "pass { causal: true } or { causal: false }");
    const causal = checkBoolean(opts.causal, "options.causal", true);
    if (list[0] !== 0) {
      throw new MagiAttnInputError(
        "cuSeqlens[0]",
        `is ${describeValue(list[0])}, not 0`,
        "start the cumulative lengths at 0",
      );
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
    if (window === null || typeof window !== "object") {
      throw new MagiAttnInputError(
        "window",
        `is ${describeValue(window)}, not { left, right }`,
        "pass { left, right } with −1 for an unbounded side, e.g. { left: 127, right: 0 }",
      );
    }
    const fix = "give a non-negative integer, or −1 for unbounded";
    const left = checkInteger(window.left, "window.left", -1, INT32_MAX, fix);
    const right = checkInteger(window.right, "window.right", -1, INT32_MAX, fix);
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
   * node order; each sample path lists node indices from a root to a leaf. For every node of every path:
   * a CAUSAL slice of the node onto itself, then a FULL slice onto each earlier node of its path (root
   * first); duplicates are removed, first occurrence kept. Every node must be on some path, a node must
   * have the same parent in every path, and several roots (a forest) are allowed.
   */
  static prefixTree(
    nodeLengths: readonly number[] | ArrayLike<number>,
    samplePaths: readonly (readonly number[])[],
  ): AttnMaskSpec {
    const tree = checkPrefixTree(nodeLengths, samplePaths);
    const slices = new SliceList();
    const nodeCount = tree.lengths.length;
    // emitted[node] = true once the node's slices are out: its ancestors are the same on every path.
    const emitted = new Uint8Array(nodeCount);
    for (const path of tree.paths) {
      for (let position = 0; position < path.length; position++) {
        const node = path[position];
        if (emitted[node]) continue;
        emitted[node] = 1;
        const qs = tree.offsets[node], qe = qs + tree.lengths[node];
        if (qs === qe) continue;
        slices.push(qs, qe, qs, qe, CAUSAL);
        for (let earlier = 0; earlier < position; earlier++) {
          const ancestor = path[earlier];
          const ks = tree.offsets[ancestor], ke = ks + tree.lengths[ancestor];
          if (ks !== ke) slices.push(qs, qe, ks, ke, FULL);
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

  /** Block-causal over `n` tokens: block i `[ib, (i+1)b)` sees keys `[0, (i+1)b)` fully; the last may be short. */
  static blockCausal(blockSize: number, n: number): AttnMaskSpec {
    const total = checkInteger(n, "n", 0, INT32_MAX, "pass the token count as a non-negative integer");
    const block = checkInteger(blockSize, "blockSize", 1, INT32_MAX, "give a positive integer block size");
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
  if (ranges === null || typeof ranges !== "object") {
    throw new MagiAttnInputError(
      "ranges",
      `is ${describeValue(ranges)}, not an object`,
      "pass { qRanges, kRanges, maskTypes, totalSeqlenQ, totalSeqlenK }",
    );
  }
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
  return createSpec(slices, totalQ, totalK);
}

interface CheckedPrefixTree {
  lengths: number[];
  paths: number[][];
  offsets: number[];
  parents: Int32Array;
  total: number;
}

/** Validates a prefix tree; returns node lengths, token offsets, paths and each node's parent (−1 root). */
function checkPrefixTree(nodeLengthsInput: unknown, samplePathsInput: unknown): CheckedPrefixTree {
  const { seqlens: lengths, total } = checkSeqlens(nodeLengthsInput, "nodeLengths");
  const nodeCount = lengths.length;
  const pathList = checkArrayLike(
    samplePathsInput,
    "samplePaths",
    "pass an array of root-to-leaf node index lists, e.g. [[0, 1], [0, 2]]",
  );
  if (pathList.length === 0) {
    throw new MagiAttnInputError(
      "samplePaths",
      "is empty",
      "give at least one path, e.g. [[0]] for a single node",
    );
  }
  const parents = new Int32Array(nodeCount).fill(-2); // −2: not seen yet, −1: a root
  const parentSeenIn = new Int32Array(nodeCount);
  const paths: number[][] = [];
  const seenInPath = new Int32Array(nodeCount).fill(-1);
  for (let pathIndex = 0; pathIndex < pathList.length; pathIndex++) {
    const field = `samplePaths[${pathIndex}]`;
    const list = checkArrayLike(pathList[pathIndex], field, "write each path as an array of node indices");
    if (list.length === 0) {
      throw new MagiAttnInputError(
        field,
        "is empty",
        "give each sample at least its root node, or drop the sample",
      );
    }
    const path = new Array<number>(list.length);
    for (let position = 0; position < list.length; position++) {
      const node = checkInteger(
        list[position],
        `${field}[${position}]`,
        0,
        nodeCount - 1,
        `use node indices into nodeLengths (0 to ${nodeCount - 1})`,
      );
      if (seenInPath[node] === pathIndex) {
        throw new MagiAttnInputError(
          `${field}[${position}]`,
          `visits node ${node} a second time`,
          "list each node of a path once, root first",
        );
      }
      seenInPath[node] = pathIndex;
      const parent = position === 0 ? -1 : path[position - 1];
      if (parents[node] === -2) {
        parents[node] = parent;
        parentSeenIn[node] = pathIndex;
      } else if (parents[node] !== parent) {
        const describe = (p: number): string => (p === -1 ? "is the root" : `has parent ${p}`);
        throw new MagiAttnInputError(
          `${field}[${position}]`,
          `is node ${node}, which ${describe(parent)} here but ${describe(parents[node])} in ` +
            `samplePaths[${parentSeenIn[node]}]`,
          "give every node one parent: paths that share a node must share the whole prefix up to it",
        );
      }
      path[position] = node;
    }
    paths.push(path);
  }
  const unused = parents.indexOf(-2);
  if (unused >= 0) {
    throw new MagiAttnInputError(
      `nodeLengths[${unused}]`,
      `belongs to node ${unused}, which is on no sample path (its tokens would attend to nothing)`,
      "add the node to a path or remove it from nodeLengths",
    );
  }
  const offsets = new Array<number>(nodeCount);
  let offset = 0;
  for (let node = 0; node < nodeCount; node++) {
    offsets[node] = offset;
    offset += lengths[node];
  }
  return { lengths, paths, offsets, parents, total };
}

/**
 * The token layout of a prefix tree (validated like {@linkcode AttnMaskSpec.prefixTree}): each sample's
 * node token ranges in path order, and position ids where a node's positions continue from the summed
 * lengths of its ancestors (prompt 0..P−1, each completion from the end of its parent path).
 */
export function prefixTreeLayout(
  nodeLengths: readonly number[] | ArrayLike<number>,
  samplePaths: readonly (readonly number[])[],
): PrefixTreeLayout {
  const tree = checkPrefixTree(nodeLengths, samplePaths);
  const sampleTokenRanges = tree.paths.map((path) =>
    path.map((node): [number, number] => [tree.offsets[node], tree.offsets[node] + tree.lengths[node]])
  );
  const positionIds = new Int32Array(tree.total);
  for (const path of tree.paths) {
    let start = 0;
    for (const node of path) {
      const offset = tree.offsets[node], length = tree.lengths[node];
      for (let token = 0; token < length; token++) positionIds[offset + token] = start + token;
      start += length;
    }
  }
  return { sampleTokenRanges, positionIds };
}
