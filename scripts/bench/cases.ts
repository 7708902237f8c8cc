/**
 * Benchmark cases shared by our runner (`scripts/bench/main.ts`) and the PyTorch peers (`scripts/bench/peers.py`):
 * shapes, the mask of each case both as slices (what our kernel runs) and as a semantic description
 * (what the peers rebuild as a FlexAttention mask_mod), and the area-counted FLOPs both sides report.
 * @module
 */

import { MagiAttnInputError } from "../../lib/core/errors.ts";
import { compileFlexKey, sliceArea } from "../../lib/masks/flex_key.ts";
import { AttnMaskSpec } from "../../lib/masks/spec.ts";
import { seededRandom } from "../../lib/core/tensor.ts";
import type { FlexKey } from "../../lib/core/types.ts";

/**
 * What a case's mask means, independent of how it is sliced. The peers rebuild the mask from this, so
 * both sides run the same visibility pattern. Token indices are absolute over the packed sequence.
 */
export type MaskDescription =
  /** Every query sees every key. */
  | { readonly kind: "full" }
  /** Query i sees keys j ≤ i. */
  | { readonly kind: "causal" }
  /** Packed documents laid out in order: a query sees keys of its own document (only j ≤ i if causal). */
  | { readonly kind: "varlen"; readonly seqlens: readonly number[]; readonly causal: boolean }
  /**
   * Packed documents with a window: a query i sees keys j of its own document with `i − left ≤ j ≤ i +
   * right` (−1 = unbounded side), FlashAttention's `window_size` meaning.
   */
  | {
    readonly kind: "sliding_window";
    readonly seqlens: readonly number[];
    readonly left: number;
    readonly right: number;
  }
  /**
   * A prefix tree: node n owns `nodeLengths[n]` tokens (laid out in node order); a query of node a sees
   * the keys of node b iff b precedes a on some path (FULL), or b = a and j ≤ i (CAUSAL).
   */
  | {
    readonly kind: "prefix_tree";
    readonly nodeLengths: readonly number[];
    readonly paths: readonly (readonly number[])[];
  };

/** The mask families the benchmark runs (names used in case names and `--cases`). */
export type MaskLabel = "full" | "causal" | "varlen" | "swa1024" | "prefix" | "shortdocs";

/** One benchmark configuration: bf16 q `[S, Hq, D]`, k and v `[S, Hkv, D]`, a mask over S tokens. */
export interface BenchCase {
  /** Unique name, e.g. `causal-16k`, `varlen-16k-gqa4`, `full-16k-d64`. */
  readonly name: string;
  /** `"main"`: the targets table; `"extra"`: other shapes reported too. */
  readonly group: "main" | "extra";
  /** Mask family. */
  readonly maskLabel: MaskLabel;
  /** Tokens (queries = keys). */
  readonly seqlen: number;
  /** Query heads. */
  readonly headsQ: number;
  /** Key/value heads (`headsQ % headsKv === 0`). */
  readonly headsKv: number;
  /** Head dimension. */
  readonly headDim: number;
  /** Element type of q, k, v, out and the gradients. */
  readonly dtype: "bfloat16";
  /** What the mask means (the peers build it from this). */
  readonly mask: MaskDescription;
}

/** Area and FLOPs of a case (forward `4·area·Hq·D`, backward 2.5× that). */
export interface CaseFlops {
  /** Visible (query, key) cells of the mask. */
  readonly area: number;
  /** Forward FLOPs. */
  readonly fwd: number;
  /** Backward FLOPs. */
  readonly bwd: number;
}

/** Knobs of the mask families; the benchmark uses {@linkcode DEFAULT_MASK_PARAMS}, tests shrink them. */
export interface MaskParams {
  /** Shortest random document of `varlen` (before the last one is trimmed). */
  readonly docMin: number;
  /** Longest random document of `varlen`. */
  readonly docMax: number;
  /** Seed of the `varlen` document lengths. */
  readonly docSeed: number;
  /** Left window of `swa1024` (right is 0: a causal window). */
  readonly window: number;
  /** Prompt (root node) tokens of `prefix`. */
  readonly promptLength: number;
  /** Branches of `prefix` (equal lengths filling the rest of the sequence). */
  readonly branches: number;
  /** Documents of `shortdocs` (equal lengths). */
  readonly shortDocs: number;
}

/** The benchmark's mask parameters (the targets table of the benchmark issue). */
export const DEFAULT_MASK_PARAMS: MaskParams = Object.freeze({
  docMin: 256,
  docMax: 4096,
  docSeed: 20240607,
  window: 1024,
  promptLength: 4096,
  branches: 8,
  shortDocs: 64,
});

/** Mask families in table order. */
export const MASK_LABELS: readonly MaskLabel[] = Object.freeze([
  "full",
  "causal",
  "varlen",
  "swa1024",
  "prefix",
  "shortdocs",
]);

/**
 * Random document lengths in `[min, max]` (uniform, from a seeded generator) drawn until they reach
 * `total`; the last one is trimmed so that they sum to exactly `total`. Same arguments, same lengths.
 */
export function drawDocumentLengths(total: number, min: number, max: number, seed: number): number[] {
  if (!Number.isSafeInteger(total) || total < 1) {
    throw new MagiAttnInputError("total", `is ${total}`, "give a positive integer token count");
  }
  if (!Number.isSafeInteger(min) || !Number.isSafeInteger(max) || min < 1 || max < min) {
    throw new MagiAttnInputError("min/max", `are ${min}/${max}`, "give integers with 1 ≤ min ≤ max");
  }
  const next = seededRandom(seed);
  const lengths: number[] = [];
  let sum = 0;
  while (sum < total) {
    const length = Math.min(min + Math.floor(next() * (max - min + 1)), total - sum);
    lengths.push(length);
    sum += length;
  }
  return lengths;
}

/** The semantic mask of one family over `seqlen` tokens. */
export function describeMask(
  label: MaskLabel,
  seqlen: number,
  params: MaskParams = DEFAULT_MASK_PARAMS,
): MaskDescription {
  switch (label) {
    case "full":
      return { kind: "full" };
    case "causal":
      return { kind: "causal" };
    case "varlen":
      return {
        kind: "varlen",
        seqlens: drawDocumentLengths(seqlen, params.docMin, params.docMax, params.docSeed),
        causal: true,
      };
    case "swa1024":
      return { kind: "sliding_window", seqlens: [seqlen], left: params.window, right: 0 };
    case "prefix": {
      const rest = seqlen - params.promptLength;
      if (rest <= 0 || rest % params.branches !== 0) {
        throw new MagiAttnInputError(
          "seqlen",
          `is ${seqlen}: ${seqlen} − prompt ${params.promptLength} does not split into ${params.branches} equal branches`,
          `use a length of prompt + a positive multiple of ${params.branches}`,
        );
      }
      const branchLength = rest / params.branches;
      const nodeLengths = [params.promptLength, ...new Array<number>(params.branches).fill(branchLength)];
      const paths = Array.from({ length: params.branches }, (_, branch) => [0, branch + 1]);
      return { kind: "prefix_tree", nodeLengths, paths };
    }
    case "shortdocs": {
      if (seqlen % params.shortDocs !== 0) {
        throw new MagiAttnInputError(
          "seqlen",
          `is ${seqlen}, not a multiple of ${params.shortDocs} documents`,
          `use a multiple of ${params.shortDocs}`,
        );
      }
      return {
        kind: "varlen",
        seqlens: new Array<number>(params.shortDocs).fill(seqlen / params.shortDocs),
        causal: true,
      };
    }
    default:
      throw new MagiAttnInputError(
        "label",
        `is ${JSON.stringify(label)}`,
        `use one of ${MASK_LABELS.join(", ")}`,
      );
  }
}

/** Our mask spec of a semantic description over `seqlen` tokens (the slices our kernel runs). */
export function specOfMask(mask: MaskDescription, seqlen: number): AttnMaskSpec {
  switch (mask.kind) {
    case "full":
      return AttnMaskSpec.full(seqlen);
    case "causal":
      return AttnMaskSpec.causal(seqlen);
    case "varlen":
      return AttnMaskSpec.varlen(mask.seqlens, { causal: mask.causal });
    case "sliding_window":
      return AttnMaskSpec.slidingWindow(mask.seqlens, { left: mask.left, right: mask.right });
    case "prefix_tree":
      return AttnMaskSpec.prefixTree(mask.nodeLengths, mask.paths);
  }
}

/**
 * Whether query i sees key j under `mask`, straight from its meaning (no slices): the oracle the tests
 * count areas with, and the same logic `scripts/bench/peers.py` gives FlexAttention as a mask_mod.
 */
export function maskVisibility(mask: MaskDescription, seqlen: number): (i: number, j: number) => boolean {
  switch (mask.kind) {
    case "full":
      return () => true;
    case "causal":
      return (i, j) => j <= i;
    case "varlen":
    case "sliding_window": {
      const documentOf = new Int32Array(seqlen);
      let start = 0;
      mask.seqlens.forEach((length, document) => {
        documentOf.fill(document, start, start + length);
        start += length;
      });
      const left = mask.kind === "varlen" ? -1 : mask.left;
      const right = mask.kind === "varlen" ? (mask.causal ? 0 : -1) : mask.right;
      return (i, j) =>
        documentOf[i] === documentOf[j] && (left < 0 || j >= i - left) && (right < 0 || j <= i + right);
    }
    case "prefix_tree": {
      const nodeCount = mask.nodeLengths.length;
      const nodeOf = new Int32Array(seqlen);
      let start = 0;
      mask.nodeLengths.forEach((length, node) => {
        nodeOf.fill(node, start, start + length);
        start += length;
      });
      // sees[a * nodeCount + b]: node a's queries see node b's keys (b before a on a path, or b = a).
      const sees = new Uint8Array(nodeCount * nodeCount);
      for (const path of mask.paths) {
        path.forEach((node, position) => {
          for (let earlier = 0; earlier <= position; earlier++) sees[node * nodeCount + path[earlier]] = 1;
        });
      }
      return (i, j) => {
        const queryNode = nodeOf[i], keyNode = nodeOf[j];
        return sees[queryNode * nodeCount + keyNode] === 1 && (queryNode !== keyNode || j <= i);
      };
    }
  }
}

/** Counts the visible cells of `mask` one by one (O(seqlen²)): a test oracle for small sizes. */
export function bruteForceArea(mask: MaskDescription, seqlen: number): number {
  const visible = maskVisibility(mask, seqlen);
  let area = 0;
  for (let i = 0; i < seqlen; i++) {
    for (let j = 0; j < seqlen; j++) if (visible(i, j)) area++;
  }
  return area;
}

/**
 * Area and FLOPs of a compiled key: forward `4·area·Hq·D`, backward 2.5× forward. Throws if `key.area`
 * differs from the sum of the closed-form slice areas (the two counts must agree).
 */
export function countFlops(key: FlexKey, headsQ: number, headDim: number): CaseFlops {
  let summed = 0;
  for (let slice = 0; slice < key.attnTypeMap.length; slice++) {
    summed += sliceArea(
      key.qRanges[2 * slice + 1] - key.qRanges[2 * slice],
      key.kRanges[2 * slice + 1] - key.kRanges[2 * slice],
      key.attnTypeMap[slice],
    );
  }
  if (summed !== key.area) {
    throw new Error(`flex key area ${key.area} differs from the sum of its slice areas ${summed}`);
  }
  const fwd = 4 * key.area * headsQ * headDim;
  return { area: key.area, fwd, bwd: 2.5 * fwd };
}

/** The compiled flex key of a case (cached by `compileFlexKey`). */
export function flexKeyOf(benchCase: BenchCase): FlexKey {
  return compileFlexKey(specOfMask(benchCase.mask, benchCase.seqlen));
}

/** Builds a case; the name is `<mask>-<S/1024>k` plus `suffix`. */
export function makeCase(
  label: MaskLabel,
  seqlen: number,
  shape: { headsQ?: number; headsKv?: number; headDim?: number; group?: "main" | "extra"; suffix?: string } =
    {},
  params: MaskParams = DEFAULT_MASK_PARAMS,
): BenchCase {
  const headsQ = shape.headsQ ?? 16, headsKv = shape.headsKv ?? headsQ, headDim = shape.headDim ?? 128;
  const size = seqlen % 1024 === 0 ? `${seqlen / 1024}k` : `${seqlen}`;
  return Object.freeze({
    name: `${label}-${size}${shape.suffix ?? ""}`,
    group: shape.group ?? "main",
    maskLabel: label,
    seqlen,
    headsQ,
    headsKv,
    headDim,
    dtype: "bfloat16" as const,
    mask: describeMask(label, seqlen, params),
  });
}

/**
 * Every benchmark case, main (S = 8k and 16k, six masks, H = 16, D = 128) first, then the extras:
 * D = 64 at 16k (full, causal, varlen), GQA 4:1 at 16k (causal, varlen), S = 4k and 32k (causal, varlen).
 */
export function allCases(): BenchCase[] {
  const cases: BenchCase[] = [];
  for (const seqlen of [8192, 16384]) {
    for (const label of MASK_LABELS) cases.push(makeCase(label, seqlen));
  }
  for (const label of ["full", "causal", "varlen"] as const) {
    cases.push(makeCase(label, 16384, { headDim: 64, group: "extra", suffix: "-d64" }));
  }
  for (const label of ["causal", "varlen"] as const) {
    cases.push(makeCase(label, 16384, { headsKv: 4, group: "extra", suffix: "-gqa4" }));
  }
  for (const seqlen of [4096, 32768]) {
    for (const label of ["causal", "varlen"] as const) {
      cases.push(makeCase(label, seqlen, { group: "extra" }));
    }
  }
  return cases;
}

/** Options of {@linkcode selectCases}. */
export interface SelectOptions {
  /** Only the main masks at 16k. */
  quick?: boolean;
  /** Only these case names (in this order); unknown names are an error listing the valid ones. */
  names?: readonly string[];
}

/** The cases a run covers: all, the 16k main ones (`quick`), or the named ones. */
export function selectCases(options: SelectOptions = {}): BenchCase[] {
  let cases = allCases();
  if (options.quick) cases = cases.filter((item) => item.group === "main" && item.seqlen === 16384);
  if (options.names && options.names.length > 0) {
    const byName = new Map(cases.map((item) => [item.name, item]));
    const unknown = options.names.filter((name) => !byName.has(name));
    if (unknown.length > 0) {
      throw new MagiAttnInputError(
        "--cases",
        `names unknown case(s) ${unknown.join(", ")}${options.quick ? " (with --quick)" : ""}`,
        `use names from: ${[...byName.keys()].join(", ")}`,
      );
    }
    cases = options.names.map((name) => byName.get(name)!);
  }
  return cases;
}

/** A case as `scripts/bench/peers.py` reads it from `cases.json` (snake_case, plain JSON). */
export interface PeerCaseJson {
  /** Case name. */
  name: string;
  /** Tokens. */
  S: number;
  /** Query heads. */
  Hq: number;
  /** Key/value heads. */
  Hkv: number;
  /** Head dimension. */
  D: number;
  /** `"bfloat16"`. */
  dtype: string;
  /** Visible cells (the peers' FLOPs use this same count). */
  area: number;
  /** Forward FLOPs. */
  flops_fwd: number;
  /** Backward FLOPs. */
  flops_bwd: number;
  /** Semantic mask, snake_case keys (`kind`, `seqlens`, `causal`, `left`, `right`, `node_lengths`, `paths`). */
  mask: Record<string, unknown>;
  /** Our slices: flat `[start, end)` pairs and AttnType numbers. */
  slices: { q_ranges: number[]; k_ranges: number[]; types: number[] };
}

/** The `cases.json` record of a case. */
export function peerCaseJson(benchCase: BenchCase, key: FlexKey, flops: CaseFlops): PeerCaseJson {
  const mask = benchCase.mask;
  const maskJson: Record<string, unknown> = { kind: mask.kind };
  if (mask.kind === "varlen") Object.assign(maskJson, { seqlens: [...mask.seqlens], causal: mask.causal });
  if (mask.kind === "sliding_window") {
    Object.assign(maskJson, { seqlens: [...mask.seqlens], left: mask.left, right: mask.right });
  }
  if (mask.kind === "prefix_tree") {
    Object.assign(maskJson, {
      node_lengths: [...mask.nodeLengths],
      paths: mask.paths.map((path) => [...path]),
    });
  }
  return {
    name: benchCase.name,
    S: benchCase.seqlen,
    Hq: benchCase.headsQ,
    Hkv: benchCase.headsKv,
    D: benchCase.headDim,
    dtype: benchCase.dtype,
    area: flops.area,
    flops_fwd: flops.fwd,
    flops_bwd: flops.bwd,
    mask: maskJson,
    slices: { q_ranges: [...key.qRanges], k_ranges: [...key.kRanges], types: [...key.attnTypeMap] },
  };
}

/** Number of query/key rows whose outputs and gradients are compared with the peers'. */
export const SAMPLE_ROW_COUNT = 8;

/** Rows compared with the peers: evenly spread over `[0, seqlen)`, first and last included. */
export function sampleRows(seqlen: number, count: number = SAMPLE_ROW_COUNT): number[] {
  if (seqlen <= count) return Array.from({ length: seqlen }, (_, row) => row);
  return Array.from({ length: count }, (_, index) => Math.round((index * (seqlen - 1)) / (count - 1)));
}
