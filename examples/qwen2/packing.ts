/**
 * Packing many sequences into one forward: a prefix tree of rollouts (a prompt, shared continuations,
 * completions) or a list of documents, each with its `AttnMaskSpec`, position ids and the packed rows of
 * every sample; running a packed forward through the stamping guard; and the error measures used to
 * compare logits.
 * @module
 */

import {
  AttnMaskSpec,
  closeAttnSpecStep,
  MagiAttnInputError,
  type ModelLike,
  prefixTreeLayout,
  resetAttnSpecGuard,
  setAttnSpecOnAttention,
} from "../../mod.ts";

/** One packed sequence and where each sample's tokens are in it. */
export interface PackedSequence {
  /** The packed token ids. */
  readonly tokenIds: number[];
  /** Position id of every packed token (restarting per sample path / document). */
  readonly positionIds: Int32Array;
  /** The mask of the packed sequence. */
  readonly spec: AttnMaskSpec;
  /** Per sample, its rows in the packed sequence, in the sample's own token order. */
  readonly sampleRows: number[][];
  /** Per sample, its tokens as one unpacked sequence (what running it alone takes). */
  readonly sampleTokenIds: number[][];
}

/**
 * Packs a prefix tree: node n holds `nodeTokens[n]`, laid out in node order; each sample is a root-to-leaf
 * path of nodes (e.g. `[[0, 1], [0, 2]]` for one prompt and two completions).
 */
export function packPrefixTree(
  nodeTokens: readonly (readonly number[])[],
  samplePaths: readonly (readonly number[])[],
): PackedSequence {
  const nodeLengths = nodeTokens.map((tokens) => tokens.length);
  const spec = AttnMaskSpec.prefixTree(nodeLengths, samplePaths); // validates the tree
  const layout = prefixTreeLayout(nodeLengths, samplePaths);
  const sampleRows = layout.sampleTokenRanges.map((ranges) =>
    ranges.flatMap(([start, end]) => Array.from({ length: end - start }, (_, offset) => start + offset))
  );
  return {
    tokenIds: nodeTokens.flat(),
    positionIds: layout.positionIds,
    spec,
    sampleRows,
    sampleTokenIds: samplePaths.map((path) => path.flatMap((node) => [...nodeTokens[node]])),
  };
}

/** Packs documents back to back, each causal on its own, with positions restarting at 0 per document. */
export function packDocuments(documents: readonly (readonly number[])[]): PackedSequence {
  const lengths = documents.map((tokens) => tokens.length);
  const spec = AttnMaskSpec.varlen(lengths); // validates the lengths
  const positionIds = new Int32Array(spec.totalSeqlenQ);
  const sampleRows: number[][] = [];
  let offset = 0;
  for (const length of lengths) {
    sampleRows.push(Array.from({ length }, (_, index) => offset + index));
    for (let index = 0; index < length; index++) positionIds[offset + index] = index;
    offset += length;
  }
  return {
    tokenIds: documents.flatMap((tokens) => [...tokens]),
    positionIds,
    spec,
    sampleRows,
    sampleTokenIds: documents.map((tokens) => [...tokens]),
  };
}

/** A model whose forward takes token ids and position ids and returns `[tokens, vocab]` logits. */
export interface CausalLMLike extends ModelLike {
  /** Logits for the tokens at the positions. */
  forward(tokenIds: ArrayLike<number>, positionIds?: ArrayLike<number>): Promise<Float32Array>;
}

/**
 * One training-style step over a packed sequence: stamps its spec on the model's attention modules, runs
 * the forward and closes the step, so a model whose attention modules did not all consume the spec raises
 * `AttnSpecNotConsumedError` here. Closing clears the stamps, so a later forward of another sequence on
 * the same model runs without this sequence's mask.
 */
export async function forwardPacked(model: CausalLMLike, packed: PackedSequence): Promise<Float32Array> {
  setAttnSpecOnAttention(model, packed.spec);
  let logits: Float32Array;
  try {
    logits = await model.forward(packed.tokenIds, packed.positionIds);
  } catch (error) {
    resetAttnSpecGuard(model); // the step failed: abandon it (disarms the guard, clears the stamps)
    throw error;
  }
  closeAttnSpecStep(model);
  return logits;
}

/** Rows `rows` of a row-major `[*, width]` matrix, as a new `[rows.length, width]` matrix. */
export function gatherRows(matrix: Float32Array, rows: readonly number[], width: number): Float32Array {
  const out = new Float32Array(rows.length * width);
  for (const [index, row] of rows.entries()) {
    if (!Number.isSafeInteger(row) || row < 0 || (row + 1) * width > matrix.length) {
      throw new MagiAttnInputError(
        `rows[${index}]`,
        `is ${row}, outside the matrix`,
        "pass rows of the matrix",
      );
    }
    out.set(matrix.subarray(row * width, (row + 1) * width), index * width);
  }
  return out;
}

/** How far `actual` is from `expected` (same length). NaN anywhere counts as an infinite error. */
export interface LogitError {
  /** `max |actual − expected|`. */
  maxAbs: number;
  /** `maxAbs / max |expected|`: the "relative" bound of the float32 checks. */
  maxRel: number;
  /** `‖actual − expected‖₂ / ‖expected‖₂`: the parity tests' relative L2 error. */
  relL2: number;
  /** `max |expected|`. */
  maxExpected: number;
}

/** Error measures of `actual` against `expected`. */
export function logitError(actual: ArrayLike<number>, expected: ArrayLike<number>): LogitError {
  if (actual.length !== expected.length) {
    throw new MagiAttnInputError(
      "actual",
      `has ${actual.length} values but expected has ${expected.length}`,
      "compare logits of the same tokens",
    );
  }
  let maxAbs = 0, maxExpected = 0, diffSquares = 0, squares = 0;
  for (let index = 0; index < actual.length; index++) {
    const diff = Math.abs(actual[index] - expected[index]);
    maxAbs = diff <= maxAbs ? maxAbs : Number.isNaN(diff) ? Infinity : diff;
    maxExpected = Math.max(maxExpected, Math.abs(expected[index]));
    diffSquares += Number.isNaN(diff) ? Infinity : diff * diff;
    squares += expected[index] * expected[index];
  }
  return {
    maxAbs,
    maxRel: maxAbs / maxExpected,
    relL2: Math.sqrt(diffSquares) / Math.sqrt(squares),
    maxExpected,
  };
}
