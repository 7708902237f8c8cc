/**
 * The attention registry (HF AttentionInterface style): models pick their attention function by
 * `config.attnImplementation`. Built-ins: `"sdpa"` (dense CPU attention) and `"magi"`.
 * @module
 */

import { MagiAttnInputError } from "../core/errors.ts";
import { fromFloat32, type HostTensor, toFloat32 } from "../core/tensor.ts";
import { magiAttentionForward } from "./magi.ts";
import {
  type AttentionFunction,
  type AttentionMask,
  type AttentionOptions,
  checkAttentionMask,
  checkAttentionModule,
  checkAttentionOptions,
  checkBhsdTensors,
} from "./attention_types.ts";

function checkFunctionArgs(name: unknown, fn?: unknown): void {
  if (typeof name !== "string" || name.length === 0) {
    throw new MagiAttnInputError("name", `is ${JSON.stringify(name)}`, "use a non-empty string");
  }
  if (fn !== undefined && typeof fn !== "function") {
    throw new MagiAttnInputError("fn", `is ${typeof fn}`, "pass an attention function");
  }
}

/**
 * Maps attention implementation names to functions. `AttentionInterface.register` adds to the global
 * mapping every instance sees; `instance.set` adds to that instance only (it shadows the global one).
 */
export class AttentionInterface {
  static #globalMapping = new Map<string, AttentionFunction>();
  #localMapping = new Map<string, AttentionFunction>();

  /** Registers `fn` under `name` for every instance (replacing an earlier registration). */
  static register(name: string, fn: AttentionFunction): void {
    checkFunctionArgs(name, fn);
    AttentionInterface.#globalMapping.set(name, fn);
  }

  /** Registers `fn` under `name` for this instance only. */
  set(name: string, fn: AttentionFunction): void {
    checkFunctionArgs(name, fn);
    this.#localMapping.set(name, fn);
  }

  /** Whether `name` is registered (locally or globally). */
  has(name: string): boolean {
    return this.#localMapping.has(name) || AttentionInterface.#globalMapping.has(name);
  }

  /** The registered names, sorted. */
  validKeys(): string[] {
    return [...new Set([...AttentionInterface.#globalMapping.keys(), ...this.#localMapping.keys()])].sort();
  }

  /** The function registered under `name`; throws an error listing the valid names if there is none. */
  get(name: string): AttentionFunction {
    const fn = this.#localMapping.get(name) ?? AttentionInterface.#globalMapping.get(name);
    if (!fn) {
      throw new MagiAttnInputError(
        "attnImplementation",
        `is ${JSON.stringify(name)}, which is not registered`,
        `use one of ${this.validKeys().map((key) => JSON.stringify(key)).join(", ")}, or register it with ` +
          "AttentionInterface.register(name, fn)",
      );
    }
    return fn;
  }

  /** The function for `implementation`, or `defaultFn` when `implementation` is null/undefined. */
  getInterface(implementation: string | null | undefined, defaultFn: AttentionFunction): AttentionFunction {
    if (implementation === null || implementation === undefined) return defaultFn;
    return this.get(implementation);
  }
}

function maskIndexer(shape: readonly number[], batch: number, heads: number, seqQ: number, seqK: number) {
  const full = shape.length === 2 ? [1, 1, shape[0], shape[1]] : shape.length === 4 ? [...shape] : null;
  const fits = full !== null && full[2] === seqQ && full[3] === seqK &&
    (full[0] === 1 || full[0] === batch) &&
    (full[1] === 1 || full[1] === heads);
  if (!fits) {
    throw new MagiAttnInputError(
      "attentionMask.shape",
      `is [${shape.join(", ")}], which does not broadcast to [${batch}, ${heads}, ${seqQ}, ${seqK}]`,
      "pass a [Sq, Sk] or [B|1, H|1, Sq, Sk] mask",
    );
  }
  const batchStride = full[0] === 1 ? 0 : full[1] * seqQ * seqK;
  const headStride = full[1] === 1 ? 0 : seqQ * seqK;
  return (b: number, h: number) => b * batchStride + h * headStride;
}

/**
 * The `"sdpa"` built-in: dense scaled dot-product attention on the CPU (float64 math), honouring a
 * boolean or additive `attentionMask`, `isCausal` (default: causal when no mask is given and the
 * module does not set `isCausal = false`), `slidingWindow`, `scaling` and `softcap`. GQA/MQA supported.
 */
export function sdpaAttentionForward(
  module: object,
  query: HostTensor,
  key: HostTensor,
  value: HostTensor,
  attentionMask: AttentionMask | null,
  rawOptions: AttentionOptions = {},
): Promise<[HostTensor, null]> {
  checkAttentionModule(module);
  const options = checkAttentionOptions(rawOptions);
  checkBhsdTensors(query, key, value);
  const mask = attentionMask === null || attentionMask === undefined
    ? null
    : checkAttentionMask(attentionMask);
  const [batch, heads, seqQ, headDim] = query.shape;
  const [batchK, headsKV, seqK, headDimK] = key.shape;
  if (batchK !== batch || headDimK !== headDim || value.shape.join() !== key.shape.join()) {
    throw new MagiAttnInputError(
      "key.shape",
      `is [${key.shape.join(", ")}] (value [${value.shape.join(", ")}]) for query [${
        query.shape.join(", ")
      }]`,
      "give key and value the shape [B, Hkv, Sk, D] with query's B and D",
    );
  }
  if (heads % headsKV !== 0) {
    throw new MagiAttnInputError(
      "key.shape[1]",
      `(${headsKV} kv heads) does not divide the ${heads} query heads`,
      "use a kv head count that divides the query head count (GQA)",
    );
  }
  // deno-lint-ignore no-explicit-any
  const moduleCausal = (module as any)?.isCausal;
  const isCausal = options.isCausal ?? (mask === null && moduleCausal !== false);
  const scale = options.scaling ?? 1 / Math.sqrt(headDim);
  const softcap = options.softcap ?? 0;
  const window = options.slidingWindow;
  const maskOffset = mask ? maskIndexer(mask.shape, batch, heads, seqQ, seqK) : null;
  const maskValues = mask ? mask.values : null;
  const isBool = mask?.isBool === true;
  const q = toFloat32(query), k = toFloat32(key), v = toFloat32(value);
  const out = new Float32Array(batch * seqQ * heads * headDim);
  const logits = new Float64Array(seqK);
  const accumulator = new Float64Array(headDim);
  const group = heads / headsKV;
  const diagonal = seqK - seqQ; // bottom-right alignment: query i sees keys j ≤ i + diagonal
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const kvHead = Math.floor(h / group);
      const qBase = (b * heads + h) * seqQ * headDim;
      const kBase = (b * headsKV + kvHead) * seqK * headDim;
      const maskBase = maskOffset ? maskOffset(b, h) : 0;
      for (let i = 0; i < seqQ; i++) {
        let rowMax = -Infinity;
        for (let j = 0; j < seqK; j++) {
          let visible = !(isCausal && j > i + diagonal);
          if (
            window !== undefined && (j <= i + diagonal - window || (!isCausal && j >= i + diagonal + window))
          ) {
            visible = false;
          }
          let logit = 0;
          if (visible) {
            for (let d = 0; d < headDim; d++) {
              logit += q[qBase + i * headDim + d] * k[kBase + j * headDim + d];
            }
            logit *= scale;
            if (softcap > 0) logit = softcap * Math.tanh(logit / softcap);
            if (maskValues) {
              const cell = maskValues[maskBase + i * seqK + j];
              if (isBool) visible = cell !== 0;
              else logit += cell;
            }
          }
          logits[j] = visible ? logit : -Infinity;
          if (logits[j] > rowMax) rowMax = logits[j];
        }
        accumulator.fill(0);
        const outBase = ((b * seqQ + i) * heads + h) * headDim;
        if (rowMax === -Infinity) continue; // fully masked row: zeros, as the magi kernel gives
        let sum = 0;
        for (let j = 0; j < seqK; j++) {
          if (logits[j] === -Infinity) continue;
          const weight = Math.exp(logits[j] - rowMax);
          sum += weight;
          for (let d = 0; d < headDim; d++) accumulator[d] += weight * v[kBase + j * headDim + d];
        }
        for (let d = 0; d < headDim; d++) out[outBase + d] = accumulator[d] / sum;
      }
    }
  }
  return Promise.resolve([fromFloat32(out, [batch, seqQ, heads, headDim], query.dtype), null]);
}

/**
 * The shared registry instance, with `"sdpa"` and `"magi"` registered. Its functions take HF's layout:
 * query `[B, H, S, D]`, key and value `[B, Hkv, S, D]`, and return `[out [B, S, H, D], null]`.
 *
 * @example An attention module dispatching on its config
 * ```ts
 * import { ALL_ATTENTION_FUNCTIONS, randomTensor } from "@magi/attn";
 *
 * const config = { attnImplementation: "magi" };
 * const module = {}; // the calling attention module (a stamped spec is read from it)
 * const query = randomTensor([1, 4, 8, 16], { seed: 1 }); // [B, H, S, D]
 * const key = randomTensor([1, 2, 8, 16], { seed: 2 }); // GQA: 2 kv heads
 * const value = randomTensor([1, 2, 8, 16], { seed: 3 });
 * const attention = ALL_ATTENTION_FUNCTIONS.get(config.attnImplementation);
 * const [out] = await attention(module, query, key, value, null, { scaling: 0.25 }); // [1, 8, 4, 16]
 * ```
 */
export const ALL_ATTENTION_FUNCTIONS: AttentionInterface = new AttentionInterface();

AttentionInterface.register("sdpa", sdpaAttentionForward);
AttentionInterface.register("magi", magiAttentionForward);
