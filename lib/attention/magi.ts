/**
 * The magi attention forward (the registry's `"magi"` entry) and the factory path
 * ({@linkcode makeMagiAttnFunc}) for code that calls attention directly.
 * @module
 */

import {
  type AttentionMask,
  type AttentionOptions,
  checkAttentionModule,
  checkAttentionOptions,
  checkBhsdTensors,
} from "./attention_types.ts";
import { describeValue, MagiAttnInputError } from "../core/errors.ts";
import { strictParser, z } from "../core/schema.ts";
import { flexFlashAttnForward } from "../backends/ffa.ts";
import { compileFlexKey } from "../masks/flex_key.ts";
import { bhsdToThd, reshape } from "../core/layout.ts";
import { AttnMaskSpec, checkAttnMaskSpec } from "../masks/spec.ts";
import { beginStampedForward, runStampedForward } from "./stamping.ts";
import { checkHostTensor, type HostTensor } from "../core/tensor.ts";
import type { FlexKey } from "../core/types.ts";

/** HF sliding window W (the query and the W − 1 keys before it) as a magi window `(left, right)`. */
function windowFromSlidingWindow(slidingWindow: number, causal: boolean): { left: number; right: number } {
  return { left: slidingWindow - 1, right: causal ? 0 : slidingWindow - 1 };
}

/** The spec used when none is stamped: each batch row its own sequence (causal, full or windowed). */
function defaultSpec(batch: number, seqLen: number, options: AttentionOptions): AttnMaskSpec {
  const causal = options.isCausal ?? true;
  const seqlens = new Array<number>(batch).fill(seqLen);
  if (options.slidingWindow !== undefined) {
    return AttnMaskSpec.slidingWindow(seqlens, windowFromSlidingWindow(options.slidingWindow, causal));
  }
  return AttnMaskSpec.varlen(seqlens, { causal });
}

function checkSpecAgainstInput(spec: AttnMaskSpec, seqQ: number, seqK: number, field: string): void {
  if (spec.totalSeqlenQ !== seqQ || spec.totalSeqlenK !== seqK) {
    throw new MagiAttnInputError(
      field,
      `covers ${spec.totalSeqlenQ} query / ${spec.totalSeqlenK} key tokens but the input has ${seqQ} / ${seqK}`,
      "build the spec for the packed sequence the model is running",
    );
  }
}

/**
 * The `"magi"` attention function: runs flex flash attention with the {@linkcode AttnMaskSpec} stamped
 * on `module`, or, with none stamped, each batch row as its own causal sequence (`isCausal: false` →
 * full, `slidingWindow` → a window). A spec needs batch 1 and must cover the sequence. The stamped spec
 * counts as consumed only once the attention output exists (a call that throws consumes nothing).
 * Dropout, a dense `attentionMask` and context parallelism are rejected, never ignored.
 */
export async function magiAttentionForward(
  module: object,
  query: HostTensor,
  key: HostTensor,
  value: HostTensor,
  attentionMask: AttentionMask | null,
  rawOptions: AttentionOptions = {},
): Promise<[HostTensor, null]> {
  checkAttentionModule(module);
  const use = beginStampedForward(module);
  return await runStampedForward(
    use,
    () => runMagiForward(module, use?.spec ?? null, query, key, value, attentionMask, rawOptions),
  );
}

async function runMagiForward(
  module: object,
  spec: AttnMaskSpec | null,
  query: HostTensor,
  key: HostTensor,
  value: HostTensor,
  attentionMask: AttentionMask | null,
  rawOptions: AttentionOptions,
): Promise<[HostTensor, null]> {
  const options = checkAttentionOptions(rawOptions);
  // deno-lint-ignore no-explicit-any
  const cpGroupSize = (module as any)?.cpGroup?.size;
  if (typeof cpGroupSize === "number" && cpGroupSize > 1) {
    throw new MagiAttnInputError(
      "module.cpGroup",
      `has size ${cpGroupSize}, but context parallelism is not supported yet`,
      "run magi attention without a context-parallel group (cpGroup size 1)",
    );
  }
  checkBhsdTensors(query, key, value);
  const [batch, heads, seqQ, headDim] = query.shape;
  const seqK = key.shape[2];
  if (key.shape[0] !== batch || value.shape[0] !== batch) {
    throw new MagiAttnInputError(
      "key.shape[0]",
      `is ${key.shape[0]} (value ${value.shape[0]}) but query's batch is ${batch}`,
      "give query, key and value the same batch size",
    );
  }
  if (attentionMask !== null && attentionMask !== undefined) {
    throw new MagiAttnInputError(
      "attentionMask",
      "was given, but magi attention takes its mask as an AttnMaskSpec, not a dense tensor",
      "pass attentionMask null and stamp the mask with setAttnSpecOnAttention(model, spec)",
    );
  }
  let flexKey: FlexKey;
  if (spec) {
    if (batch !== 1) {
      throw new MagiAttnInputError(
        "query.shape[0]",
        `is ${batch}, but a stamped AttnMaskSpec describes one packed sequence`,
        "pack the batch into one sequence (batch 1) and describe it with the spec",
      );
    }
    if (options.slidingWindow !== undefined || options.isCausal !== undefined) {
      const field = options.slidingWindow !== undefined ? "opts.slidingWindow" : "opts.isCausal";
      throw new MagiAttnInputError(
        field,
        "was given together with a stamped AttnMaskSpec, which already defines the whole mask",
        "drop the option, or build the window/causality into the spec (e.g. AttnMaskSpec.slidingWindow)",
      );
    }
    checkSpecAgainstInput(spec, seqQ, seqK, "module._magiAttnSpec");
    flexKey = compileFlexKey(spec);
  } else {
    if (seqQ !== seqK) {
      throw new MagiAttnInputError(
        "key.shape[2]",
        `is ${seqK} but query has ${seqQ} tokens; without a spec magi needs equal lengths`,
        "stamp an AttnMaskSpec whose totals give the query and key lengths",
      );
    }
    flexKey = compileFlexKey(defaultSpec(batch, seqQ, options));
  }
  const { out } = await flexFlashAttnForward(
    bhsdToThd(query, "query"),
    bhsdToThd(key, "key"),
    bhsdToThd(value, "value"),
    flexKey,
    { softmaxScale: options.scaling, softcap: options.softcap },
  );
  return [reshape(out, [batch, seqQ, heads, headDim]), null];
}

let activeSpec: AttnMaskSpec | null = null;

/** Sets the spec the factory path uses when a call gives no spec, cuSeqlens or stamped module (`null` clears). */
export function setActiveAttnSpec(spec: AttnMaskSpec | null): void {
  activeSpec = spec === null ? null : checkAttnMaskSpec(spec, "spec", "pass an AttnMaskSpec or null");
}

/** The spec set by {@linkcode setActiveAttnSpec}, or `null`. */
export function getActiveAttnSpec(): AttnMaskSpec | null {
  return activeSpec;
}

/** Per-call options of the function returned by {@linkcode makeMagiAttnFunc}. */
export interface MagiAttnCallOptions {
  /** The mask for this call (highest priority). */
  magiAttnSpec?: AttnMaskSpec;
  /** Packed document boundaries `[0, l0, l0 + l1, …]` (causal documents). */
  cuSeqlens?: readonly number[] | Int32Array;
  /** FlashAttention window `[left, right]` (−1 = unbounded) applied per document with `cuSeqlens` or alone. */
  windowSize?: readonly [number, number];
  /** An attention module whose stamped spec to use (and mark consumed) when no spec or cuSeqlens is given. */
  module?: object;
}

/** A magi attention function for thd `[T, H, D]` or bshd `[1, S, H, D]` tensors; output in the input layout. */
export type MagiAttnFunc = (
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  options?: MagiAttnCallOptions,
) => Promise<HostTensor>;

function toThd(input: HostTensor, field: string): HostTensor {
  checkHostTensor(input, field);
  if (input.shape.length === 3) return input;
  if (input.shape.length === 4 && input.shape[0] === 1) return reshape(input, input.shape.slice(1));
  throw new MagiAttnInputError(
    `${field}.shape`,
    `is [${input.shape.join(", ")}]`,
    "pass thd [T, H, D] or bshd [1, S, H, D] (pack batches into one sequence)",
  );
}

const FACTORY_OPTIONS = z.strictObject({ softmaxScale: z.number().positive().optional() });

const parseFactoryOptions = strictParser(FACTORY_OPTIONS, {
  field: "factoryOptions",
  owner: "makeMagiAttnFunc",
  fix: "pass { softmaxScale } or nothing",
  fixes: { softmaxScale: "pass a finite positive scale, or leave it out for 1/sqrt(headDim)" },
});

const windowBound = z.int().min(-1);

const CALL_OPTIONS = z.strictObject({
  magiAttnSpec: z.unknown().optional(),
  cuSeqlens: z.custom<readonly number[] | Int32Array>(
    (value) => Array.isArray(value) || value instanceof Int32Array,
    { error: (issue) => `is ${describeValue(issue.input)}, not an array` },
  ).optional(),
  windowSize: z.tuple([windowBound, windowBound]).optional(),
  module: z.custom<object>((value) => value !== null && typeof value === "object", {
    error: (issue) => `is ${describeValue(issue.input)}, not an attention module`,
  }).optional(),
});

const parseCallOptions = strictParser(CALL_OPTIONS, {
  field: "options",
  owner: "the magi attention function",
  fix: "pass { magiAttnSpec, cuSeqlens, windowSize, module } or nothing",
  fixes: {
    magiAttnSpec: "build it with AttnMaskSpec",
    cuSeqlens: "pass cumulative sequence lengths such as [0, 5, 12]",
    windowSize: "pass [left, right] with non-negative integers, or −1 for an unbounded side",
    module: "pass the attention module whose stamped spec to use",
  },
});

/**
 * Throws when `input` holds the spec's token count in the heads dimension but not in the tokens one: the
 * HF layout `[1, H, S, D]` (or `[H, T, D]`) passed where the factory takes `[1, S, H, D]` (or thd).
 */
function checkNotTransposed(input: HostTensor, tokens: number, field: string): void {
  const rank = input.shape.length;
  const tokenAxis = rank - 3, headAxis = rank - 2;
  if (input.shape[tokenAxis] === tokens || input.shape[headAxis] !== tokens) return;
  const wanted = rank === 4 ? "[1, S, H, D]" : "[T, H, D]";
  const got = rank === 4 ? "[1, H, S, D] (HF's layout)" : "[H, T, D]";
  throw new MagiAttnInputError(
    `${field}.shape`,
    `is [${input.shape.join(", ")}]: the spec covers ${tokens} tokens, which is dimension ${headAxis} ` +
      `(heads) here, not dimension ${tokenAxis} (tokens), so it looks like ${got} where ${wanted} is expected`,
    `swap dimensions ${tokenAxis} and ${headAxis} (transpose to ${wanted}), or call the registry's ` +
      '"magi" function (ALL_ATTENTION_FUNCTIONS), which takes [B, H, S, D]',
  );
}

/**
 * Factory path: returns an attention function that picks its mask by priority — explicit `magiAttnSpec`
 * → `cuSeqlens` → the stamped spec of `module` → the active spec → causal. A stamped spec counts as
 * consumed once the call has produced its output. Gives bitwise the same output as the `"magi"` registry
 * entry for the same spec.
 *
 * @example Packed documents by their boundaries
 * ```ts
 * import { makeMagiAttnFunc, randomTensor } from "@magi/attn";
 *
 * const attention = makeMagiAttnFunc();
 * const q = randomTensor([8, 2, 16], { seed: 1 }); // thd [tokens, heads, headDim], or [1, S, H, D]
 * const k = randomTensor([8, 2, 16], { seed: 2 });
 * const v = randomTensor([8, 2, 16], { seed: 3 });
 * const out = await attention(q, k, v, { cuSeqlens: [0, 5, 8] }); // [8, 2, 16], two causal documents
 * ```
 */
export function makeMagiAttnFunc(factoryOptions: { softmaxScale?: number } = {}): MagiAttnFunc {
  const { softmaxScale } = parseFactoryOptions(factoryOptions);
  return async (q, k, v, rawOptions) => {
    const options = parseCallOptions(rawOptions);
    const use = options.magiAttnSpec === undefined && options.cuSeqlens === undefined &&
        options.module !== undefined
      ? beginStampedForward(options.module)
      : null;
    return await runStampedForward(
      use,
      () => runFactoryCall(q, k, v, options, use?.spec ?? null, softmaxScale),
    );
  };
}

async function runFactoryCall(
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  options: z.output<typeof CALL_OPTIONS>,
  stamped: AttnMaskSpec | null,
  softmaxScale: number | undefined,
): Promise<HostTensor> {
  const qThd = toThd(q, "q"), kThd = toThd(k, "k"), vThd = toThd(v, "v");
  const totalQ = qThd.shape[0], totalK = kThd.shape[0];
  const window = options.windowSize;
  const rejectWindow = (source: string): never => {
    throw new MagiAttnInputError(
      "options.windowSize",
      `cannot be combined with ${source}, which already defines the whole mask`,
      "build the window into the spec with AttnMaskSpec.slidingWindow, or drop windowSize",
    );
  };
  const windowOf = (): { left: number; right: number } => ({ left: window![0], right: window![1] });
  let spec: AttnMaskSpec;
  if (options.magiAttnSpec !== undefined) {
    spec = checkAttnMaskSpec(options.magiAttnSpec, "options.magiAttnSpec", "build it with AttnMaskSpec");
    if (window) rejectWindow("an explicit magiAttnSpec");
  } else if (options.cuSeqlens !== undefined) {
    // fromCuSeqlens validates the boundaries (and names `cuSeqlens` in its errors) in both cases.
    const documents = AttnMaskSpec.fromCuSeqlens(Array.from(options.cuSeqlens));
    spec = window
      ? AttnMaskSpec.slidingWindow(documents.qRanges.map(([start, end]) => end - start), windowOf())
      : documents;
  } else if (window) {
    if (stamped) rejectWindow("the module's stamped spec");
    if (activeSpec) rejectWindow("the active spec");
    spec = AttnMaskSpec.slidingWindow(totalQ, windowOf());
  } else {
    spec = stamped ?? activeSpec ?? AttnMaskSpec.causal(totalQ);
  }
  checkNotTransposed(q, spec.totalSeqlenQ, "q");
  checkNotTransposed(k, spec.totalSeqlenK, "k");
  checkNotTransposed(v, spec.totalSeqlenK, "v");
  checkSpecAgainstInput(spec, totalQ, totalK, "spec");
  const flexKey = compileFlexKey(spec);
  const { out } = await flexFlashAttnForward(qThd, kThd, vThd, flexKey, { softmaxScale });
  return reshape(out as HostTensor, q.shape);
}
