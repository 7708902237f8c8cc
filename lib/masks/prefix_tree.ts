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

/**
 * A validated prefix tree: node lengths, paths, token offsets, parents (−1 root, −2 for a node without
 * tokens that is on no path) and total tokens.
 */
export interface CheckedPrefixTree {
  lengths: number[];
  paths: number[][];
  offsets: number[];
  parents: Int32Array;
  total: number;
}

/**
 * Validates a prefix tree; returns node lengths, token offsets, paths and each node's parent (−1 root,
 * −2 for a node without tokens on no path).
 */
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
  // A node on no path is fine when it has no tokens (it attends to nothing, e.g. an empty prompt folded
  // out of the paths); one with tokens would leave them without a mask.
  for (let node = 0; node < nodeCount; node++) {
    if (parents[node] === -2 && lengths[node] > 0) {
      throw new MagiAttnInputError(
        `nodeLengths[${node}]`,
        `belongs to node ${node}, which has ${lengths[node]} token(s) but is on no sample path (they would ` +
          "attend to nothing)",
        "add the node to a path, or remove it from nodeLengths (a node without tokens may stay off every path)",
      );
    }
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

/** A run of consecutive tokens of one chain of nodes, and the token runs of the nodes above it. */
export interface PrefixTreeSegment {
  /** First token of the chain. */
  readonly start: number;
  /** End (exclusive) of the chain's tokens. */
  readonly end: number;
  /** The chain's ancestors' tokens as sorted, disjoint, non-adjacent runs `s0, e0, s1, e1, …`. */
  readonly ancestorRuns: readonly number[];
}

/** `runs` (sorted, disjoint, non-adjacent pairs) with `[start, end)` added, merging adjacent runs. */
function insertRun(runs: readonly number[], start: number, end: number): number[] {
  const out: number[] = [];
  let position = 0;
  while (position < runs.length && runs[position] < start) {
    out.push(runs[position], runs[position + 1]);
    position += 2;
  }
  let runStart = start, runEnd = end;
  if (out.length > 0 && out[out.length - 1] === start) {
    runStart = out[out.length - 2];
    out.length -= 2;
  }
  if (position < runs.length && runs[position] === end) {
    runEnd = runs[position + 1];
    position += 2;
  }
  out.push(runStart, runEnd);
  for (; position < runs.length; position++) out.push(runs[position]);
  return out;
}

/**
 * The tree's tokens as chain segments in token order: a node laid out right after its (nearest, with
 * tokens) parent, while that parent is the last node of its segment, extends the parent's segment. Each
 * segment carries its ancestors' token runs. O(nodes + total runs), never O(tokens).
 */
export function prefixTreeSegments(tree: CheckedPrefixTree): PrefixTreeSegment[] {
  const { lengths, offsets, parents } = tree;
  const nodeCount = lengths.length;
  // The nearest ancestor with tokens (−1 none), resolved once per node with an explicit stack.
  const tokenParent = new Int32Array(nodeCount).fill(-3); // −3: not resolved yet
  const pending: number[] = [];
  for (let node = 0; node < nodeCount; node++) {
    for (let at = node; tokenParent[at] === -3;) {
      pending.push(at);
      const parent = parents[at];
      if (parent < 0 || lengths[parent] > 0) break;
      at = parent;
    }
    while (pending.length > 0) {
      const at = pending.pop()!;
      const parent = parents[at];
      tokenParent[at] = parent < 0 ? -1 : lengths[parent] > 0 ? parent : tokenParent[parent];
    }
  }
  const segmentOf = new Int32Array(nodeCount).fill(-1);
  const heads: number[] = [], starts: number[] = [], ends: number[] = [], lastNodes: number[] = [];
  for (let node = 0; node < nodeCount; node++) {
    if (lengths[node] === 0) continue;
    const parent = tokenParent[node];
    const segment = parent >= 0 ? segmentOf[parent] : -1;
    if (segment >= 0 && lastNodes[segment] === parent && ends[segment] === offsets[node]) {
      ends[segment] = offsets[node] + lengths[node];
      lastNodes[segment] = node;
      segmentOf[node] = segment;
    } else {
      segmentOf[node] = heads.length;
      heads.push(node);
      starts.push(offsets[node]);
      ends.push(offsets[node] + lengths[node]);
      lastNodes.push(node);
    }
  }
  // Ancestor runs of each segment: those of the parent's segment plus that segment up to the parent.
  const runsOf = new Array<readonly number[] | undefined>(heads.length).fill(undefined);
  const chain: number[] = [];
  const empty: readonly number[] = [];
  for (let segment = 0; segment < heads.length; segment++) {
    for (let at = segment; at >= 0 && runsOf[at] === undefined;) {
      chain.push(at);
      const parent = tokenParent[heads[at]];
      at = parent < 0 ? -1 : segmentOf[parent];
    }
    while (chain.length > 0) {
      const at = chain.pop()!;
      const parent = tokenParent[heads[at]];
      if (parent < 0) {
        runsOf[at] = empty;
        continue;
      }
      const above = segmentOf[parent];
      runsOf[at] = insertRun(runsOf[above]!, starts[above], offsets[parent] + lengths[parent]);
    }
  }
  return heads.map((_, segment) => ({
    start: starts[segment],
    end: ends[segment],
    ancestorRuns: runsOf[segment]!,
  }));
}
