/**
 * Writes a random-weight Qwen2 checkpoint folder (`config.json` + `model.safetensors`, or shards with an
 * index) in HF's layout, so the reader, the model and the packing run without PyTorch. The weights are
 * scaled so attention is far from uniform (masks change the logits) and biases and norm scales are not
 * their trivial initial values (a forgotten bias or scale changes the logits).
 *
 * Run: `deno run --allow-write examples/qwen2/synthetic.ts DIR [--tied] [--seed N]`
 * @module
 */

import { randomTensor, toFloat32 } from "../../mod.ts";
import { type Qwen2Config, qwen2ConfigToJson } from "./config.ts";
import { qwen2WeightShapes } from "./model.ts";
import { encodeSafetensors, type SafetensorsDType, type SafetensorsInput } from "./safetensors.ts";

/** The synthetic model's shape: 2 layers, hidden 256, 4 query / 2 KV heads of 64, vocab 1000. */
export const SYNTHETIC_QWEN2_CONFIG: Qwen2Config = {
  attnImplementation: "magi",
  attentionDtype: "float32",
  vocabSize: 1000,
  hiddenSize: 256,
  intermediateSize: 384,
  numHiddenLayers: 2,
  numAttentionHeads: 4,
  numKeyValueHeads: 2,
  headDim: 64,
  rmsNormEps: 1e-6,
  ropeTheta: 10000,
  tieWordEmbeddings: false,
};

/** Options of {@linkcode writeSyntheticQwen2Checkpoint}. */
export interface SyntheticCheckpointOptions {
  /** Config fields to change from {@linkcode SYNTHETIC_QWEN2_CONFIG}. */
  config?: Partial<Qwen2Config>;
  /** Seed of the weights. Default 1. */
  seed?: number;
  /** Storage dtype. Default `"BF16"` (as HF checkpoints usually are). */
  dtype?: SafetensorsDType;
  /** Split the tensors over this many shard files with an index. Default 1 (one `model.safetensors`). */
  shards?: number;
}

/** The random value scale of a weight: unit-variance outputs for matrices, O(1) biases, scales near 1. */
function initialise(name: string, shape: readonly number[], seed: number): Float32Array {
  const values = toFloat32(randomTensor(shape, { seed }));
  if (name.endsWith("layernorm.weight") || name === "model.norm.weight") {
    return values.map((value) => 1 + 0.25 * Math.tanh(value)); // scales in (0.75, 1.25)
  }
  if (name.endsWith(".bias")) return values.map((value) => 0.5 * value);
  if (name === "model.embed_tokens.weight") return values;
  // q and k a little larger than unit gain, so attention logits spread over a few units.
  const gain = /\.(q|k)_proj\.weight$/.test(name) ? 1.5 : 1;
  const scale = gain / Math.sqrt(shape[1]);
  return values.map((value) => value * scale);
}

/** Every tensor of a synthetic checkpoint for `config`, in HF's names and order, with float values. */
export function syntheticQwen2Tensors(
  config: Qwen2Config,
  seed = 1,
  dtype: SafetensorsDType = "BF16",
): SafetensorsInput[] {
  return [...qwen2WeightShapes(config)].map(([name, shape], index) => ({
    name,
    dtype,
    shape,
    values: initialise(name, shape, seed * 1000 + index),
  }));
}

/** Writes a synthetic checkpoint folder to `dir` (created if needed) and returns its config. */
export async function writeSyntheticQwen2Checkpoint(
  dir: string,
  options: SyntheticCheckpointOptions = {},
): Promise<Qwen2Config> {
  const config = { ...SYNTHETIC_QWEN2_CONFIG, ...options.config };
  const tensors = syntheticQwen2Tensors(config, options.seed ?? 1, options.dtype ?? "BF16");
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(qwen2ConfigToJson(config), null, 2) + "\n");
  const shards = options.shards ?? 1;
  if (shards === 1) {
    await Deno.writeFile(`${dir}/model.safetensors`, encodeSafetensors(tensors, { format: "pt" }));
    return config;
  }
  const weightMap: Record<string, string> = {};
  const perShard = Math.ceil(tensors.length / shards);
  for (let shard = 0; shard < shards; shard++) {
    const name = `model-${String(shard + 1).padStart(5, "0")}-of-${
      String(shards).padStart(5, "0")
    }.safetensors`;
    const part = tensors.slice(shard * perShard, (shard + 1) * perShard);
    for (const tensor of part) weightMap[tensor.name] = name;
    await Deno.writeFile(`${dir}/${name}`, encodeSafetensors(part, { format: "pt" }));
  }
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2) + "\n",
  );
  return config;
}

if (import.meta.main) {
  const [dir, ...flags] = Deno.args;
  if (!dir) {
    console.error("usage: deno run --allow-write examples/qwen2/synthetic.ts DIR [--tied] [--seed N]");
    Deno.exit(2);
  }
  const seedFlag = flags.indexOf("--seed");
  const config = await writeSyntheticQwen2Checkpoint(dir, {
    config: { tieWordEmbeddings: flags.includes("--tied") },
    seed: seedFlag >= 0 ? Number(flags[seedFlag + 1]) : 1,
  });
  console.log(`wrote a random Qwen2 checkpoint (${config.numHiddenLayers} layers) to ${dir}`);
}
