/**
 * The Qwen2 configuration: read from an HF `config.json` (transformers 4.x writes `rope_theta`, 5.x
 * `rope_parameters.rope_theta`; both are read) and checked before any weight is touched.
 * @module
 */

import type { DType } from "../../mod.ts";
import { CheckpointError } from "./errors.ts";

/** Hyper-parameters of a Qwen2 decoder (HF names in camelCase) plus how to run attention. */
export interface Qwen2Config {
  /** Registry name of the attention function: `"magi"`, `"sdpa"`, or one registered by the caller. */
  attnImplementation: string;
  /** dtype of q, k and v handed to attention (`"bfloat16"` runs on the GPU); all else stays float32. */
  attentionDtype: DType;
  /** Vocabulary size (rows of the embedding, columns of the logits). */
  vocabSize: number;
  /** Width of the residual stream. */
  hiddenSize: number;
  /** Width of the SwiGLU MLP. */
  intermediateSize: number;
  /** Number of decoder layers. */
  numHiddenLayers: number;
  /** Query heads. */
  numAttentionHeads: number;
  /** Key/value heads (GQA: divides the query heads). */
  numKeyValueHeads: number;
  /** Per-head width (`hidden_size / num_attention_heads` unless the config says `head_dim`). */
  headDim: number;
  /** RMSNorm epsilon. */
  rmsNormEps: number;
  /** RoPE base θ. */
  ropeTheta: number;
  /** Whether the LM head reuses the token embedding (then the checkpoint may omit `lm_head.weight`). */
  tieWordEmbeddings: boolean;
}

/** What a caller may set when loading (everything else comes from `config.json`). */
export interface Qwen2LoadOptions {
  /** Attention implementation; default `"magi"`. */
  attnImplementation?: string;
  /** dtype of attention inputs; default `"float32"`. */
  attentionDtype?: DType;
}

const ATTENTION_DTYPES: readonly DType[] = ["float32", "float16", "bfloat16"];

function describe(value: unknown): string {
  return value === undefined ? "missing" : JSON.stringify(value) ?? String(value);
}

/**
 * Checks an HF Qwen2 `config.json` object (`file` labels errors) and returns the model's config. Rejects
 * what this decoder does not implement (another model type, an activation other than SiLU, RoPE scaling,
 * sliding-window layers) instead of running it wrongly.
 */
export function parseQwen2Config(json: unknown, file: string, options: Qwen2LoadOptions = {}): Qwen2Config {
  const fail = (field: string, problem: string, fix: string): never => {
    throw new CheckpointError({ file, field }, problem, fix);
  };
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    fail("config", `is ${describe(json)}, not a JSON object`, "point at an HF model folder's config.json");
  }
  const raw = json as Record<string, unknown>;
  if (raw.model_type !== "qwen2") {
    fail(
      "model_type",
      `is ${describe(raw.model_type)}, not "qwen2"`,
      "load a Qwen2 checkpoint (this decoder implements the Qwen2 architecture only)",
    );
  }
  const positiveInteger = (name: string, fallback?: number): number => {
    const value = raw[name] ?? fallback;
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
      fail(name, `is ${describe(raw[name])}, not a positive integer`, `set ${name} to a positive integer`);
    }
    return value as number;
  };
  const positiveNumber = (name: string, value: unknown): number => {
    if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
      fail(name, `is ${describe(value)}, not a positive number`, `set ${name} to a positive number`);
    }
    return value as number;
  };
  const vocabSize = positiveInteger("vocab_size");
  const hiddenSize = positiveInteger("hidden_size");
  const intermediateSize = positiveInteger("intermediate_size");
  const numHiddenLayers = positiveInteger("num_hidden_layers");
  const numAttentionHeads = positiveInteger("num_attention_heads");
  const numKeyValueHeads = positiveInteger("num_key_value_heads", numAttentionHeads);
  if (numAttentionHeads % numKeyValueHeads !== 0) {
    fail(
      "num_key_value_heads",
      `is ${numKeyValueHeads}, which does not divide num_attention_heads ${numAttentionHeads}`,
      "use a key/value head count that divides the query head count (GQA)",
    );
  }
  if (raw.head_dim === undefined || raw.head_dim === null) {
    if (hiddenSize % numAttentionHeads !== 0) {
      fail(
        "hidden_size",
        `is ${hiddenSize}, not a multiple of num_attention_heads ${numAttentionHeads}, and head_dim is not set`,
        "set head_dim, or a hidden_size that the head count divides",
      );
    }
  }
  const headDim = raw.head_dim === undefined || raw.head_dim === null
    ? hiddenSize / numAttentionHeads
    : positiveInteger("head_dim");
  if (headDim % 2 !== 0) fail("head_dim", `is ${headDim}, odd`, "use an even head dim (RoPE rotates pairs)");
  const rmsNormEps = positiveNumber("rms_norm_eps", raw.rms_norm_eps ?? 1e-6);
  const hiddenAct = raw.hidden_act ?? "silu";
  if (hiddenAct !== "silu") {
    fail("hidden_act", `is ${describe(hiddenAct)}`, 'use "silu" (the Qwen2 MLP is SwiGLU)');
  }
  if (raw.use_sliding_window === true) {
    fail(
      "use_sliding_window",
      "is true, but this decoder runs every layer with full causal attention",
      "set use_sliding_window to false (Qwen2 checkpoints ship it false)",
    );
  }
  const layerTypes = raw.layer_types;
  if (layerTypes !== undefined && layerTypes !== null) {
    if (!Array.isArray(layerTypes) || layerTypes.length !== numHiddenLayers) {
      fail("layer_types", `is ${describe(layerTypes)}`, `list one type per layer (${numHiddenLayers})`);
    }
    const other = (layerTypes as unknown[]).findIndex((type) => type !== "full_attention");
    if (other >= 0) {
      fail(
        `layer_types[${other}]`,
        `is ${describe((layerTypes as unknown[])[other])}, but this decoder runs full causal attention only`,
        'use a checkpoint whose layers are all "full_attention"',
      );
    }
  }
  // RoPE: 5.x keeps θ and the type in rope_parameters; 4.x has rope_theta and an optional rope_scaling.
  const ropeParameters = raw.rope_parameters ?? raw.rope_scaling ?? null;
  if (ropeParameters !== null && (typeof ropeParameters !== "object" || Array.isArray(ropeParameters))) {
    fail("rope_parameters", `is ${describe(ropeParameters)}, not an object`, "set it to an object or null");
  }
  const rope = (ropeParameters ?? {}) as Record<string, unknown>;
  const ropeType = rope.rope_type ?? rope.type ?? "default";
  if (ropeType !== "default") {
    fail(
      raw.rope_parameters !== undefined ? "rope_parameters.rope_type" : "rope_scaling.type",
      `is ${describe(ropeType)}, but this decoder implements only the default RoPE`,
      'use a checkpoint with rope_type "default" (no RoPE scaling)',
    );
  }
  const ropeTheta = positiveNumber(
    rope.rope_theta !== undefined ? "rope_parameters.rope_theta" : "rope_theta",
    rope.rope_theta ?? raw.rope_theta ?? 10000,
  );
  const tie = raw.tie_word_embeddings ?? false;
  if (typeof tie !== "boolean") fail("tie_word_embeddings", `is ${describe(tie)}`, "set true or false");
  const attnImplementation = options.attnImplementation ?? "magi";
  if (typeof attnImplementation !== "string" || attnImplementation.length === 0) {
    throw new CheckpointError(
      { file: "(load options)", field: "attnImplementation" },
      `is ${describe(attnImplementation)}`,
      'pass a registered name such as "magi" or "sdpa"',
    );
  }
  const attentionDtype = options.attentionDtype ?? "float32";
  if (!ATTENTION_DTYPES.includes(attentionDtype)) {
    throw new CheckpointError(
      { file: "(load options)", field: "attentionDtype" },
      `is ${describe(attentionDtype)}`,
      `use one of ${ATTENTION_DTYPES.join(", ")}`,
    );
  }
  return {
    attnImplementation,
    attentionDtype,
    vocabSize,
    hiddenSize,
    intermediateSize,
    numHiddenLayers,
    numAttentionHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps,
    ropeTheta,
    tieWordEmbeddings: tie as boolean,
  };
}

/** Reads and checks `DIR/config.json`. */
export async function readQwen2Config(dir: string, options: Qwen2LoadOptions = {}): Promise<Qwen2Config> {
  const file = `${dir.replace(/\/+$/, "")}/config.json`;
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    throw new CheckpointError(
      { file },
      `cannot be read (${error instanceof Error ? error.message : String(error)})`,
      "point at an HF model folder (it holds config.json and the safetensors weights)",
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new CheckpointError(
      { file, field: "config" },
      `is not valid JSON (${error instanceof Error ? error.message : String(error)})`,
      "restore the file that save_pretrained wrote",
    );
  }
  return parseQwen2Config(json, file, options);
}

/** The HF `config.json` object (transformers 5.x style) for a config, as `save_pretrained` would write it. */
export function qwen2ConfigToJson(config: Qwen2Config): Record<string, unknown> {
  return {
    architectures: ["Qwen2ForCausalLM"],
    model_type: "qwen2",
    vocab_size: config.vocabSize,
    hidden_size: config.hiddenSize,
    intermediate_size: config.intermediateSize,
    num_hidden_layers: config.numHiddenLayers,
    num_attention_heads: config.numAttentionHeads,
    num_key_value_heads: config.numKeyValueHeads,
    ...(config.headDim * config.numAttentionHeads !== config.hiddenSize ? { head_dim: config.headDim } : {}),
    hidden_act: "silu",
    rms_norm_eps: config.rmsNormEps,
    rope_parameters: { rope_theta: config.ropeTheta, rope_type: "default" },
    tie_word_embeddings: config.tieWordEmbeddings,
    use_sliding_window: false,
    attention_dropout: 0,
  };
}
