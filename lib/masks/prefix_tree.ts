/**
 * Prefix trees (e.g. RL rollouts sharing a prompt): validation of node lengths and sample paths, and the
 * token layout (per-sample token ranges, position ids). {@linkcode AttnMaskSpec.prefixTree} builds the
 * mask from the same checked tree.
 * @module
 */

import { MagiAttnInputError } from "../core/errors.ts";
import { checkArrayLike, checkInteger, checkSeqlens } from "./checks.ts";

/** Token layout of a prefix tree, from {@linkcode prefixTreeLayout}. */
export interface PrefixTreeLayout {
  /** Per sample, the `[start, end)` token ranges of the nodes of its path, root first. */
  sampleTokenRanges: [number, number][][];
  /** Position id of every token: a node's positions start at the summed lengths of its ancestors. */
  positionIds: Int32Array;
}

/** A validated prefix tree: node lengths, paths, token offsets, parents (−1 root) and total tokens. */
export interface CheckedPrefixTree {
  lengths: number[];
  paths: number[][];
  offsets: number[];
  parents: Int32Array;
  total: number;
}

/** Validates a prefix tree; returns node lengths, token offsets, paths and each node's parent (−1 root). */
export function checkPrefixTree(nodeLengthsInput: unknown, samplePathsInput: unknown): CheckedPrefixTree {
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
 *
 * @example
 * ```ts
 * import { AttnMaskSpec, prefixTreeLayout } from "@magi/attn";
 *
 * const nodeLengths = [4, 2, 3], samplePaths = [[0, 1], [0, 2]];
 * const spec = AttnMaskSpec.prefixTree(nodeLengths, samplePaths);
 * const { sampleTokenRanges, positionIds } = prefixTreeLayout(nodeLengths, samplePaths);
 * // sampleTokenRanges[1] = [[0, 4], [6, 9]]; positionIds = 0 1 2 3 | 4 5 | 4 5 6
 * ```
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
