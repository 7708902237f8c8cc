/**
 * A Qwen2-architecture decoder in TypeScript, written from the architecture's definition: token
 * embedding; per layer RMSNorm → GQA self-attention (q/k/v projections with biases, rotary embedding from
 * `position_ids`, no o-proj bias) → residual → RMSNorm → SwiGLU MLP → residual; final RMSNorm and a tied or
 * untied LM head. Matmuls run in float32 on the CPU; attention goes through
 * `ALL_ATTENTION_FUNCTIONS.get(attnImplementation)` with HF's `[B, H, S, D]` layouts, so `"magi"` (CPU
 * reference or the CUDA library, by the attention dtype) and `"sdpa"` are both real choices.
 * `Qwen2ForCausalLM.fromPretrained(dir)` loads an HF checkpoint folder.
 * @module
 */

import { ALL_ATTENTION_FUNCTIONS, fromFloat32, MagiAttnInputError, toFloat32 } from "../../mod.ts";
import { type Qwen2Config, type Qwen2LoadOptions, readQwen2Config } from "./config.ts";
import { CheckpointError } from "./errors.ts";
import { applyRope, type RopeTables, ropeTables } from "./rope.ts";
import { readSafetensors, type SafetensorsTensor } from "./safetensors.ts";

/** A linear layer as HF stores it: `weight [outFeatures, inFeatures]`, optional `bias [outFeatures]`. */
export interface Linear {
  /** Row-major `[outFeatures, inFeatures]`. */
  readonly weight: Float32Array;
  /** `[outFeatures]`, or null for a layer without bias. */
  readonly bias: Float32Array | null;
  /** Input width. */
  readonly inFeatures: number;
  /** Output width. */
  readonly outFeatures: number;
}

/** `x [tokens, in] · Wᵀ + b` → `[tokens, out]`; each output is a dot product of two contiguous rows. */
export function applyLinear(layer: Linear, x: Float32Array, tokens: number): Float32Array {
  const { weight, bias, inFeatures, outFeatures } = layer;
  const out = new Float32Array(tokens * outFeatures);
  const tail = inFeatures - (inFeatures % 4);
  for (let token = 0; token < tokens; token++) {
    const xBase = token * inFeatures;
    for (let row = 0; row < outFeatures; row++) {
      const wBase = row * inFeatures;
      // Four accumulators keep the loop off one dependency chain (and sum in float64).
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      let index = 0;
      for (; index < tail; index += 4) {
        s0 += x[xBase + index] * weight[wBase + index];
        s1 += x[xBase + index + 1] * weight[wBase + index + 1];
        s2 += x[xBase + index + 2] * weight[wBase + index + 2];
        s3 += x[xBase + index + 3] * weight[wBase + index + 3];
      }
      for (; index < inFeatures; index++) s0 += x[xBase + index] * weight[wBase + index];
      out[token * outFeatures + row] = s0 + s1 + s2 + s3 + (bias ? bias[row] : 0);
    }
  }
  return out;
}

/** RMSNorm: `weight · x / sqrt(mean(x²) + eps)` over the last dimension. */
export class Qwen2RMSNorm {
  /**
   * A norm with learned scale `weight`.
   * @param weight the learned scale `[dim]`
   * @param eps added to the mean square
   */
  constructor(readonly weight: Float32Array, readonly eps: number) {}

  /** Normalizes each of the `tokens` rows of `x`. */
  forward(x: Float32Array, tokens: number): Float32Array {
    const dim = this.weight.length;
    const out = new Float32Array(x.length);
    for (let token = 0; token < tokens; token++) {
      const base = token * dim;
      let sum = 0;
      for (let index = 0; index < dim; index++) sum += x[base + index] * x[base + index];
      const inverse = Math.fround(1 / Math.sqrt(Math.fround(sum / dim) + this.eps));
      for (let index = 0; index < dim; index++) {
        out[base + index] = this.weight[index] * Math.fround(x[base + index] * inverse);
      }
    }
    return out;
  }
}

/** The SwiGLU MLP: `down(silu(gate(x)) · up(x))`, no biases. */
export class Qwen2MLP {
  /**
   * An MLP of three projections.
   * @param gateProj `[intermediate, hidden]`
   * @param upProj `[intermediate, hidden]`
   * @param downProj `[hidden, intermediate]`
   */
  constructor(readonly gateProj: Linear, readonly upProj: Linear, readonly downProj: Linear) {}

  /** The MLP of `tokens` rows. */
  forward(x: Float32Array, tokens: number): Float32Array {
    const gate = applyLinear(this.gateProj, x, tokens);
    const up = applyLinear(this.upProj, x, tokens);
    for (let index = 0; index < gate.length; index++) {
      const value = gate[index];
      gate[index] = Math.fround(value / (1 + Math.exp(-value))) * up[index];
    }
    return applyLinear(this.downProj, gate, tokens);
  }
}

/** `[S, H, D]` values → a `[1, H, S, D]` float array (HF's attention layout). */
function toHeadsFirst(x: Float32Array, tokens: number, heads: number, headDim: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let token = 0; token < tokens; token++) {
    for (let head = 0; head < heads; head++) {
      const from = (token * heads + head) * headDim;
      out.set(x.subarray(from, from + headDim), (head * tokens + token) * headDim);
    }
  }
  return out;
}

/**
 * GQA self-attention. The class name contains "Attention", so `setAttnSpecOnAttention` stamps it; the
 * function comes from the registry by `attnImplementation` (this module's, else the config's).
 */
export class Qwen2Attention {
  /** HF's flag: causal when no mask or spec says otherwise (the `"sdpa"` built-in reads it). */
  readonly isCausal = true;
  /** Overrides `config.attnImplementation` for this layer only (undefined: use the config's). */
  attnImplementation: string | undefined = undefined;

  /**
   * The attention block of layer `layerIndex`.
   * @param config the model config (read at every call, so changing it switches the implementation)
   * @param layerIndex index of the decoder layer
   * @param qProj `[heads · headDim, hidden]` with bias
   * @param kProj `[kvHeads · headDim, hidden]` with bias
   * @param vProj `[kvHeads · headDim, hidden]` with bias
   * @param oProj `[hidden, heads · headDim]`, no bias
   */
  constructor(
    readonly config: Qwen2Config,
    readonly layerIndex: number,
    readonly qProj: Linear,
    readonly kProj: Linear,
    readonly vProj: Linear,
    readonly oProj: Linear,
  ) {}

  /** Attention over `tokens` rows of `x` (already normalized), rotated by `rope`. */
  async forward(x: Float32Array, tokens: number, rope: RopeTables): Promise<Float32Array> {
    const { numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim, attentionDtype } = this.config;
    const query = applyLinear(this.qProj, x, tokens);
    const key = applyLinear(this.kProj, x, tokens);
    const value = applyLinear(this.vProj, x, tokens);
    applyRope(query, tokens, heads, rope);
    applyRope(key, tokens, kvHeads, rope);
    const attention = ALL_ATTENTION_FUNCTIONS.get(this.attnImplementation ?? this.config.attnImplementation);
    const [out] = await attention(
      this,
      fromFloat32(toHeadsFirst(query, tokens, heads, headDim), [1, heads, tokens, headDim], attentionDtype),
      fromFloat32(toHeadsFirst(key, tokens, kvHeads, headDim), [1, kvHeads, tokens, headDim], attentionDtype),
      fromFloat32(
        toHeadsFirst(value, tokens, kvHeads, headDim),
        [1, kvHeads, tokens, headDim],
        attentionDtype,
      ),
      null,
      { scaling: 1 / Math.sqrt(headDim) },
    );
    // out is [1, S, H, D], i.e. [S, heads · headDim] row-major.
    return applyLinear(this.oProj, toFloat32(out), tokens);
  }
}

/** One decoder layer: pre-norm attention and pre-norm MLP, each with a residual connection. */
export class Qwen2DecoderLayer {
  /**
   * A layer of its four parts.
   * @param selfAttn the attention block
   * @param mlp the SwiGLU MLP
   * @param inputLayernorm the norm before attention
   * @param postAttentionLayernorm the norm before the MLP
   */
  constructor(
    readonly selfAttn: Qwen2Attention,
    readonly mlp: Qwen2MLP,
    readonly inputLayernorm: Qwen2RMSNorm,
    readonly postAttentionLayernorm: Qwen2RMSNorm,
  ) {}

  /** The layer over `tokens` rows of the residual stream `x`. */
  async forward(x: Float32Array, tokens: number, rope: RopeTables): Promise<Float32Array> {
    const attended = await this.selfAttn.forward(this.inputLayernorm.forward(x, tokens), tokens, rope);
    const residual = new Float32Array(x.length);
    for (let index = 0; index < x.length; index++) residual[index] = x[index] + attended[index];
    const mixed = this.mlp.forward(this.postAttentionLayernorm.forward(residual, tokens), tokens);
    for (let index = 0; index < x.length; index++) residual[index] += mixed[index];
    return residual;
  }
}

/** The backbone: token embedding, decoder layers, final norm. */
export class Qwen2Model {
  /**
   * The backbone of its parts.
   * @param embedTokens `[vocab, hidden]`
   * @param layers the decoder layers
   * @param norm the final norm
   */
  constructor(
    readonly embedTokens: Float32Array,
    readonly layers: readonly Qwen2DecoderLayer[],
    readonly norm: Qwen2RMSNorm,
  ) {}
}

/** The weights a Qwen2 checkpoint must hold for `config`: HF name → shape. */
export function qwen2WeightShapes(config: Qwen2Config): Map<string, number[]> {
  const { hiddenSize: hidden, intermediateSize: inner, vocabSize: vocab, headDim } = config;
  const qWidth = config.numAttentionHeads * headDim, kvWidth = config.numKeyValueHeads * headDim;
  const shapes = new Map<string, number[]>([["model.embed_tokens.weight", [vocab, hidden]]]);
  for (let layer = 0; layer < config.numHiddenLayers; layer++) {
    const prefix = `model.layers.${layer}.`;
    shapes.set(`${prefix}input_layernorm.weight`, [hidden]);
    shapes.set(`${prefix}self_attn.q_proj.weight`, [qWidth, hidden]);
    shapes.set(`${prefix}self_attn.q_proj.bias`, [qWidth]);
    shapes.set(`${prefix}self_attn.k_proj.weight`, [kvWidth, hidden]);
    shapes.set(`${prefix}self_attn.k_proj.bias`, [kvWidth]);
    shapes.set(`${prefix}self_attn.v_proj.weight`, [kvWidth, hidden]);
    shapes.set(`${prefix}self_attn.v_proj.bias`, [kvWidth]);
    shapes.set(`${prefix}self_attn.o_proj.weight`, [hidden, qWidth]);
    shapes.set(`${prefix}post_attention_layernorm.weight`, [hidden]);
    shapes.set(`${prefix}mlp.gate_proj.weight`, [inner, hidden]);
    shapes.set(`${prefix}mlp.up_proj.weight`, [inner, hidden]);
    shapes.set(`${prefix}mlp.down_proj.weight`, [hidden, inner]);
  }
  shapes.set("model.norm.weight", [hidden]);
  if (!config.tieWordEmbeddings) shapes.set("lm_head.weight", [vocab, hidden]);
  return shapes;
}

/** Tensors some checkpoints carry that the model does not need (RoPE is recomputed from the config). */
const IGNORED_TENSOR = /(^|\.)rotary_emb\.inv_freq$/;

/** Where each tensor of a checkpoint came from (for error messages). */
export interface CheckpointTensors {
  /** The tensors by name. */
  readonly tensors: ReadonlyMap<string, SafetensorsTensor>;
  /** The file that holds each tensor. */
  readonly fileOf: ReadonlyMap<string, string>;
  /** What to name when a tensor is missing: the weights file, or the shard index. */
  readonly source: string;
}

/** Reads `model.safetensors`, or every shard of `model.safetensors.index.json`, from `dir`. */
export async function readCheckpointTensors(dir: string): Promise<CheckpointTensors> {
  const base = dir.replace(/\/+$/, "");
  const indexFile = `${base}/model.safetensors.index.json`;
  let shardFiles: string[];
  let source: string;
  let weightMap: Record<string, unknown> | null = null;
  let indexText: string | null = null;
  try {
    indexText = await Deno.readTextFile(indexFile);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      throw new CheckpointError(
        { file: indexFile },
        `cannot be read (${String(error)})`,
        "check permissions",
      );
    }
  }
  if (indexText === null) {
    source = `${base}/model.safetensors`;
    shardFiles = [source];
  } else {
    source = indexFile;
    let index: unknown;
    try {
      index = JSON.parse(indexText);
    } catch (error) {
      throw new CheckpointError(
        { file: indexFile, field: "index" },
        `is not valid JSON (${error})`,
        "re-save it",
      );
    }
    const map = (index as Record<string, unknown> | null)?.weight_map;
    if (
      map === null || typeof map !== "object" || Array.isArray(map) ||
      Object.values(map).some((shard) => typeof shard !== "string" || shard.includes("/"))
    ) {
      throw new CheckpointError(
        { file: indexFile, field: "weight_map" },
        "is not an object mapping tensor names to shard file names in this folder",
        "restore the index that save_pretrained wrote",
      );
    }
    weightMap = map as Record<string, unknown>;
    shardFiles = [...new Set(Object.values(weightMap) as string[])].map((shard) => `${base}/${shard}`);
  }
  const tensors = new Map<string, SafetensorsTensor>();
  const fileOf = new Map<string, string>();
  for (const shardFile of shardFiles) {
    const shard = await readSafetensors(shardFile);
    for (const [name, tensor] of shard.tensors) {
      if (tensors.has(name)) {
        throw new CheckpointError(
          { file: shardFile, tensor: name },
          `is also in ${fileOf.get(name)}`,
          "keep each tensor in one shard",
        );
      }
      const listed = weightMap?.[name];
      if (weightMap && `${base}/${listed}` !== shardFile) {
        throw new CheckpointError(
          { file: shardFile, tensor: name },
          `is in this shard, but ${indexFile} maps it to ${JSON.stringify(listed)}`,
          "restore the shards and the index that save_pretrained wrote together",
        );
      }
      tensors.set(name, tensor);
      fileOf.set(name, shardFile);
    }
  }
  return { tensors, fileOf, source };
}

function checkTensor(
  name: string,
  shape: readonly number[],
  checkpoint: CheckpointTensors,
  config: Qwen2Config,
): Float32Array {
  const tensor = checkpoint.tensors.get(name);
  if (!tensor) {
    throw new CheckpointError(
      { file: checkpoint.source, tensor: name },
      "is missing",
      name === "lm_head.weight"
        ? "use a checkpoint that has the LM head, or set tie_word_embeddings true if it shares the embedding"
        : `use a complete Qwen2 checkpoint whose tensors match config.json (${config.numHiddenLayers} layers)`,
    );
  }
  const file = checkpoint.fileOf.get(name) ?? checkpoint.source;
  if (tensor.shape.length !== shape.length || tensor.shape.some((dim, index) => dim !== shape[index])) {
    throw new CheckpointError(
      { file, tensor: name },
      `has shape [${tensor.shape.join(", ")}], but config.json implies [${shape.join(", ")}]`,
      "use the config.json that belongs to these weights",
    );
  }
  const bad = tensor.data.findIndex((value) => !Number.isFinite(value));
  if (bad >= 0) {
    throw new CheckpointError(
      { file, tensor: name },
      `holds ${tensor.data[bad]} at element ${bad}`,
      "use a checkpoint with finite weights (the file may be corrupted)",
    );
  }
  return tensor.data;
}

/**
 * Checks a checkpoint's tensors against `config` (every expected tensor present with its shape and finite
 * values; no tensor the model would ignore) and returns them by name. Nothing is built before all pass.
 */
export function checkQwen2Weights(
  config: Qwen2Config,
  checkpoint: CheckpointTensors,
): Map<string, Float32Array> {
  const shapes = qwen2WeightShapes(config);
  for (const name of checkpoint.tensors.keys()) {
    // A tied checkpoint may still store lm_head.weight (a copy of the embedding); HF ties over it.
    const tiedHead = name === "lm_head.weight" && config.tieWordEmbeddings;
    if (!shapes.has(name) && !tiedHead && !IGNORED_TENSOR.test(name)) {
      throw new CheckpointError(
        { file: checkpoint.fileOf.get(name) ?? checkpoint.source, tensor: name },
        "is not a weight of the Qwen2 model config.json describes",
        `use the config.json that belongs to these weights (${config.numHiddenLayers} layers; Qwen2 has q/k/v ` +
          "biases and no o_proj bias)",
      );
    }
  }
  const weights = new Map<string, Float32Array>();
  for (const [name, shape] of shapes) weights.set(name, checkTensor(name, shape, checkpoint, config));
  return weights;
}

/** The causal language model: the backbone and the LM head (`[vocab, hidden]`, or the embedding if tied). */
export class Qwen2ForCausalLM {
  /** The backbone. */
  readonly model: Qwen2Model;
  /** The LM head (its weight is the embedding when tied). */
  readonly lmHead: Linear;

  /**
   * Builds the model from checked weights (see {@linkcode checkQwen2Weights}).
   * @param config the model config
   * @param weights HF tensor name → values
   */
  constructor(readonly config: Qwen2Config, weights: ReadonlyMap<string, Float32Array>) {
    const get = (name: string): Float32Array => {
      const value = weights.get(name);
      if (!value) throw new MagiAttnInputError(`weights["${name}"]`, "is missing", "pass checked weights");
      return value;
    };
    const { hiddenSize: hidden, intermediateSize: inner, headDim, rmsNormEps: eps } = config;
    const qWidth = config.numAttentionHeads * headDim, kvWidth = config.numKeyValueHeads * headDim;
    const linear = (name: string, inFeatures: number, outFeatures: number, bias: boolean): Linear => ({
      weight: get(`${name}.weight`),
      bias: bias ? get(`${name}.bias`) : null,
      inFeatures,
      outFeatures,
    });
    const layers = Array.from({ length: config.numHiddenLayers }, (_, index) => {
      const prefix = `model.layers.${index}`;
      return new Qwen2DecoderLayer(
        new Qwen2Attention(
          config,
          index,
          linear(`${prefix}.self_attn.q_proj`, hidden, qWidth, true),
          linear(`${prefix}.self_attn.k_proj`, hidden, kvWidth, true),
          linear(`${prefix}.self_attn.v_proj`, hidden, kvWidth, true),
          linear(`${prefix}.self_attn.o_proj`, qWidth, hidden, false),
        ),
        new Qwen2MLP(
          linear(`${prefix}.mlp.gate_proj`, hidden, inner, false),
          linear(`${prefix}.mlp.up_proj`, hidden, inner, false),
          linear(`${prefix}.mlp.down_proj`, inner, hidden, false),
        ),
        new Qwen2RMSNorm(get(`${prefix}.input_layernorm.weight`), eps),
        new Qwen2RMSNorm(get(`${prefix}.post_attention_layernorm.weight`), eps),
      );
    });
    const embedTokens = get("model.embed_tokens.weight");
    this.model = new Qwen2Model(embedTokens, layers, new Qwen2RMSNorm(get("model.norm.weight"), eps));
    this.lmHead = {
      weight: config.tieWordEmbeddings ? embedTokens : get("lm_head.weight"),
      bias: null,
      inFeatures: hidden,
      outFeatures: config.vocabSize,
    };
  }

  /**
   * Loads an HF checkpoint folder: `config.json` and `model.safetensors` (or sharded safetensors with
   * `model.safetensors.index.json`). Everything is read and checked before the model is built, so a bad
   * file throws a {@linkcode CheckpointError} and yields no model.
   */
  static async fromPretrained(dir: string, options: Qwen2LoadOptions = {}): Promise<Qwen2ForCausalLM> {
    const config = await readQwen2Config(dir, options);
    const checkpoint = await readCheckpointTensors(dir);
    return new Qwen2ForCausalLM(config, checkQwen2Weights(config, checkpoint));
  }

  /**
   * Logits `[tokens, vocab]` (row-major) for `tokenIds` at `positionIds` (default 0, 1, 2, …). With a spec
   * stamped on the attention modules, the tokens are one packed sequence described by that spec.
   */
  async forward(tokenIds: ArrayLike<number>, positionIds?: ArrayLike<number>): Promise<Float32Array> {
    const { vocabSize, hiddenSize: hidden, headDim, ropeTheta } = this.config;
    const tokens = tokenIds?.length;
    if (!Number.isSafeInteger(tokens) || tokens === 0) {
      throw new MagiAttnInputError("tokenIds", `has ${tokens} tokens`, "pass a non-empty array of token ids");
    }
    for (let index = 0; index < tokens; index++) {
      const id = tokenIds[index];
      if (!Number.isSafeInteger(id) || id < 0 || id >= vocabSize) {
        throw new MagiAttnInputError(
          `tokenIds[${index}]`,
          `is ${id}, outside the vocabulary [0, ${vocabSize})`,
          "pass integer token ids below vocab_size",
        );
      }
    }
    const positions = new Int32Array(tokens);
    if (positionIds === undefined) {
      for (let index = 0; index < tokens; index++) positions[index] = index;
    } else {
      if (positionIds.length !== tokens) {
        throw new MagiAttnInputError(
          "positionIds",
          `has ${positionIds.length} entries for ${tokens} tokens`,
          "give one position id per token (e.g. prefixTreeLayout(...).positionIds)",
        );
      }
      for (let index = 0; index < tokens; index++) {
        const position = positionIds[index];
        if (!Number.isSafeInteger(position) || position < 0 || position > 0x7fffffff) {
          throw new MagiAttnInputError(
            `positionIds[${index}]`,
            `is ${position}`,
            "pass non-negative integer positions",
          );
        }
        positions[index] = position;
      }
    }
    const embed = this.model.embedTokens;
    let x: Float32Array = new Float32Array(tokens * hidden);
    for (let token = 0; token < tokens; token++) {
      const row = tokenIds[token] * hidden;
      x.set(embed.subarray(row, row + hidden), token * hidden);
    }
    const rope = ropeTables(positions, headDim, ropeTheta);
    for (const layer of this.model.layers) x = await layer.forward(x, tokens, rope);
    return applyLinear(this.lmHead, this.model.norm.forward(x, tokens), tokens);
  }
}
