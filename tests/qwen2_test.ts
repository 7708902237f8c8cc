/**
 * The Qwen2 decoder of examples/qwen2 as a real client of the library: its safetensors and config readers
 * (every loading error), its forward against a float64 oracle written from the architecture's definition,
 * packed prefix-tree rollouts and packed documents against each sample run alone, the consumption guard
 * on a misconfigured model, and (with the committed fixture) transformers' own logits.
 */

import assert from "node:assert/strict";
import {
  ALL_ATTENTION_FUNCTIONS,
  AttentionInterface,
  AttnSpecNotConsumedError,
  closeAttnSpecStep,
  MagiAttnInputError,
  prefixTreeLayout,
  resetAttnSpecGuard,
  sdpaAttentionForward,
  setAttnSpecOnAttention,
} from "../mod.ts";
import { bf16BitsToFloat32, float32ToBf16Bits } from "../testing.ts";
import { parseQwen2Config, readQwen2Config } from "../examples/qwen2/config.ts";
import { CheckpointError } from "../examples/qwen2/errors.ts";
import {
  QWEN2_FIXTURE_DIR,
  QWEN2_FIXTURE_FORMAT,
  QWEN2_FIXTURE_HOWTO,
  qwen2FixtureExists,
  readQwen2Fixture,
} from "../examples/qwen2/fixture.ts";
import { Qwen2ForCausalLM } from "../examples/qwen2/model.ts";
import {
  forwardPacked,
  gatherRows,
  logitError,
  packDocuments,
  type PackedSequence,
  packPrefixTree,
} from "../examples/qwen2/packing.ts";
import { encodeSafetensors, parseSafetensors, readSafetensors } from "../examples/qwen2/safetensors.ts";
import {
  SYNTHETIC_QWEN2_CONFIG,
  syntheticQwen2Tensors,
  writeSyntheticQwen2Checkpoint,
} from "../examples/qwen2/synthetic.ts";
import { oracleQwen2Logits } from "./qwen2_oracle.ts";

/** The float32 bound of the issue: max |ours − reference| ≤ 1e-4 · max |reference|, per sample. */
const FLOAT32_RELATIVE = 1e-4;
const VOCAB = SYNTHETIC_QWEN2_CONFIG.vocabSize;

/** Deterministic token ids in [0, VOCAB). */
function tokens(length: number, seed: number): number[] {
  return Array.from({ length }, (_, index) => (index * 7919 + seed * 104729 + 13) % VOCAB);
}

/** Expects `run` to throw a CheckpointError whose message names every string of `mentions`. */
async function assertCheckpointError(
  run: () => unknown,
  mentions: readonly string[],
): Promise<CheckpointError> {
  let caught: unknown;
  try {
    await run();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof CheckpointError, `expected a CheckpointError, got ${caught}`);
  assert.ok(caught instanceof MagiAttnInputError, "a CheckpointError is one of the library's input errors");
  assert.match(caught.message, /^magi-attn: `[^`]+` in .+\. Fix: .+\.$/s);
  for (const mention of mentions) {
    assert.ok(caught.message.includes(mention), `"${mention}" in: ${caught.message}`);
  }
  return caught;
}

const scratch = await Deno.makeTempDir({ prefix: "magi-qwen2-" });
const untiedDir = `${scratch}/untied`;
const tiedDir = `${scratch}/tied`;
const shardedDir = `${scratch}/sharded`;
await writeSyntheticQwen2Checkpoint(untiedDir, { seed: 3 });
await writeSyntheticQwen2Checkpoint(tiedDir, { seed: 3, config: { tieWordEmbeddings: true } });
await writeSyntheticQwen2Checkpoint(shardedDir, { seed: 3, shards: 3 });

/** A copy of the untied checkpoint, changed by `edit`, in a fresh folder. */
async function editedCheckpoint(
  name: string,
  edit: (dir: string) => Promise<void>,
): Promise<string> {
  const dir = `${scratch}/${name}`;
  await Deno.mkdir(dir);
  for (const file of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${untiedDir}/${file}`, `${dir}/${file}`);
  }
  await edit(dir);
  return dir;
}

/** Rewrites the untied checkpoint's weights through `change` (a list of tensors in, a list out). */
function rewriteWeights(change: (tensors: ReturnType<typeof syntheticQwen2Tensors>) => typeof tensors) {
  return async (dir: string) => {
    const tensors = syntheticQwen2Tensors(SYNTHETIC_QWEN2_CONFIG, 3);
    await Deno.writeFile(`${dir}/model.safetensors`, encodeSafetensors(change(tensors)));
  };
}

Deno.test("safetensors: BF16, F16 and F32 round-trip with metadata; every malformed file is named", async (t) => {
  const values = [0, -1.5, 3.14159, 1e-3, -65504, 2 ** -20, 1 / 3, 1234.5678];
  const bytes = encodeSafetensors(
    [
      { name: "a.bf16", dtype: "BF16", shape: [2, 4], values },
      { name: "b.f16", dtype: "F16", shape: [8], values },
      { name: "c.f32", dtype: "F32", shape: [4, 2], values },
      { name: "d.empty", dtype: "F32", shape: [0, 3], values: [] },
    ],
    { note: "hello" },
  );
  const file = parseSafetensors(bytes, "mem.safetensors");
  await t.step("values, shapes, dtypes, order and metadata", () => {
    assert.deepEqual([...file.tensors.keys()], ["a.bf16", "b.f16", "c.f32", "d.empty"]);
    assert.deepEqual(file.metadata, { note: "hello" });
    assert.deepEqual(file.tensors.get("a.bf16")!.shape, [2, 4]);
    assert.deepEqual(
      [...file.tensors.get("a.bf16")!.data],
      values.map((v) => bf16BitsToFloat32(float32ToBf16Bits(v))),
    );
    assert.deepEqual([...file.tensors.get("b.f16")!.data], values.map((v) => Math.f16round(v)));
    assert.deepEqual([...file.tensors.get("c.f32")!.data], values.map((v) => Math.fround(v)));
    assert.equal(file.tensors.get("d.empty")!.data.length, 0);
    assert.equal(file.tensors.get("c.f32")!.dtype, "F32");
    // The header is padded to 8 bytes, so the data section starts aligned.
    assert.equal(Number(new DataView(bytes.buffer).getBigUint64(0, true)) % 8, 0);
  });

  /** A file with this header object and `dataBytes` zero bytes of data. */
  const withHeader = (header: unknown, dataBytes: number, rawHeader?: string): Uint8Array => {
    const json = new TextEncoder().encode(rawHeader ?? JSON.stringify(header));
    const out = new Uint8Array(8 + json.length + dataBytes);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(json, 8);
    return out;
  };
  const entry = (dtype: string, shape: unknown, offsets: unknown) => ({
    dtype,
    shape,
    data_offsets: offsets,
  });
  const cases: [string, Uint8Array, string[]][] = [
    ["shorter than the length field", bytes.subarray(0, 5), ["5 bytes", "truncated"]],
    ["header length past the end", bytes.subarray(0, 40), ["header length", "truncated"]],
    ["header is not JSON", withHeader(null, 0, "{not json"), ["`header`", "not valid UTF-8 JSON"]],
    ["header is an array", withHeader([1, 2], 0), ["`header`", "not an object"]],
    ["unsupported dtype", withHeader({ ids: entry("I64", [2], [0, 16]) }, 16), [
      "`ids`",
      '"I64"',
      "BF16, F16 or F32",
    ]],
    ["bad shape", withHeader({ w: entry("F32", [2, -1], [0, 8]) }, 8), ["`w`", "[2,-1]"]],
    ["bad offsets", withHeader({ w: entry("F32", [2], [8, 0]) }, 8), ["`w`", "data_offsets"]],
    ["bytes do not match the shape", withHeader({ w: entry("F32", [3], [0, 8]) }, 8), ["`w`", "needs 12"]],
    ["truncated data", bytes.subarray(0, bytes.length - 3), ["`c.f32`", "truncated"]],
    [
      "overlapping tensors",
      withHeader({ a: entry("F32", [2], [0, 8]), b: entry("F32", [2], [4, 12]) }, 12),
      ["`b`", "inside the bytes of another tensor"],
    ],
    [
      "a hole between tensors",
      withHeader({ a: entry("F32", [1], [0, 4]), b: entry("F32", [1], [8, 12]) }, 12),
      ["`b`", "unused"],
    ],
    ["trailing bytes", withHeader({ a: entry("F32", [1], [0, 4]) }, 8), [
      "`data`",
      "4 bytes after the last tensor",
    ]],
    ["metadata not strings", withHeader({ __metadata__: { n: 1 } }, 0), [
      "`__metadata__`",
      "object of strings",
    ]],
  ];
  for (const [name, input, mentions] of cases) {
    await t.step(name, async () => {
      await assertCheckpointError(() => parseSafetensors(input, "bad.safetensors"), [
        "bad.safetensors",
        ...mentions,
      ]);
    });
  }
  await t.step("a missing file", async () => {
    await assertCheckpointError(() => readSafetensors(`${scratch}/nope.safetensors`), [
      "nope.safetensors",
      "cannot be read",
    ]);
  });
});

Deno.test("config.json: transformers 4.x and 5.x spellings, and every field this decoder cannot run", async (t) => {
  const v5 = JSON.parse(await Deno.readTextFile(`${untiedDir}/config.json`));
  await t.step("5.x rope_parameters and 4.x rope_theta give the same config", () => {
    const fromV5 = parseQwen2Config(v5, "config.json");
    const { rope_parameters: _, ...rest } = v5;
    const fromV4 = parseQwen2Config({ ...rest, rope_theta: 10000, rope_scaling: null }, "config.json");
    assert.deepEqual(fromV4, fromV5);
    assert.deepEqual(fromV5, SYNTHETIC_QWEN2_CONFIG);
    const withLayerTypes = { ...v5, layer_types: ["full_attention", "full_attention"], sliding_window: null };
    assert.deepEqual(parseQwen2Config(withLayerTypes, "config.json"), fromV5);
    assert.equal(
      parseQwen2Config({ ...v5, rope_parameters: { rope_theta: 1e6, rope_type: "default" } }, "c").ropeTheta,
      1e6,
    );
  });
  await t.step("defaults: kv heads = heads, head dim = hidden / heads; options", () => {
    const { num_key_value_heads: _, ...rest } = v5;
    const config = parseQwen2Config(rest, "c", { attnImplementation: "sdpa", attentionDtype: "bfloat16" });
    assert.equal(config.numKeyValueHeads, 4);
    assert.equal(config.headDim, 64);
    assert.equal(config.attnImplementation, "sdpa");
    assert.equal(config.attentionDtype, "bfloat16");
    assert.equal(parseQwen2Config({ ...v5, head_dim: 32 }, "c").headDim, 32);
  });
  const bad: [string, Record<string, unknown>, string[]][] = [
    ["another model type", { model_type: "llama" }, ["`model_type`", '"llama"']],
    ["a missing size", { hidden_size: undefined }, ["`hidden_size`", "missing"]],
    ["a non-integer size", { vocab_size: 10.5 }, ["`vocab_size`", "10.5"]],
    ["kv heads that do not divide", { num_key_value_heads: 3 }, ["`num_key_value_heads`", "does not divide"]],
    ["hidden not divisible by heads", { hidden_size: 250 }, ["`hidden_size`", "head_dim"]],
    ["an odd head dim", { head_dim: 63 }, ["`head_dim`", "odd"]],
    ["another activation", { hidden_act: "gelu" }, ["`hidden_act`", '"gelu"']],
    ["sliding-window layers", { use_sliding_window: true }, ["`use_sliding_window`"]],
    ["a sliding-window layer type", { layer_types: ["full_attention", "sliding_attention"] }, [
      "`layer_types[1]`",
      '"sliding_attention"',
    ]],
    ["layer types of another depth", { layer_types: ["full_attention"] }, [
      "`layer_types`",
      "one type per layer (2)",
    ]],
    ["RoPE scaling", { rope_parameters: { rope_type: "yarn", rope_theta: 1e4 } }, ["rope_type", '"yarn"']],
    ["4.x RoPE scaling", { rope_parameters: undefined, rope_scaling: { type: "linear" } }, [
      "rope_scaling.type",
    ]],
    ["a bad eps", { rms_norm_eps: -1 }, ["`rms_norm_eps`"]],
    ["a bad tie flag", { tie_word_embeddings: "yes" }, ["`tie_word_embeddings`"]],
  ];
  for (const [name, change, mentions] of bad) {
    await t.step(name, async () => {
      await assertCheckpointError(() => parseQwen2Config({ ...v5, ...change }, "/m/config.json"), [
        "/m/config.json",
        ...mentions,
      ]);
    });
  }
  await t.step("not an object, not JSON, not there", async () => {
    await assertCheckpointError(() => parseQwen2Config([1], "c.json"), ["`config`", "not a JSON object"]);
    const dir = await editedCheckpoint("bad-json", (d) => Deno.writeTextFile(`${d}/config.json`, "{"));
    await assertCheckpointError(() => readQwen2Config(dir), [`${dir}/config.json`, "not valid JSON"]);
    await assertCheckpointError(() => readQwen2Config(`${scratch}/none`), ["config.json", "cannot be read"]);
  });
  await t.step("bad load options", async () => {
    await assertCheckpointError(() => parseQwen2Config(v5, "c", { attnImplementation: "" }), [
      "attnImplementation",
    ]);
    await assertCheckpointError(
      // deno-lint-ignore no-explicit-any
      () => parseQwen2Config(v5, "c", { attentionDtype: "int8" as any }),
      ["attentionDtype", "bfloat16"],
    );
  });
});

Deno.test("fromPretrained: every bad checkpoint names the tensor and the file, and yields no model", async (t) => {
  const q0 = "model.layers.0.self_attn.q_proj.bias";
  const cases: [string, (dir: string) => Promise<void>, (dir: string) => string[]][] = [
    [
      "no config.json",
      (dir) => Deno.remove(`${dir}/config.json`),
      (dir) => [`${dir}/config.json`, "cannot be read"],
    ],
    ["no weights", (dir) => Deno.remove(`${dir}/model.safetensors`), (dir) => [`${dir}/model.safetensors`]],
    [
      "a missing tensor (a q bias)",
      rewriteWeights((tensors) => tensors.filter((tensor) => tensor.name !== q0)),
      (dir) => [`\`${q0}\``, `${dir}/model.safetensors`, "is missing"],
    ],
    [
      "a missing untied LM head",
      rewriteWeights((tensors) => tensors.filter((tensor) => tensor.name !== "lm_head.weight")),
      () => ["`lm_head.weight`", "tie_word_embeddings"],
    ],
    [
      "weights of another config",
      async (dir) => {
        const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
        await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ ...config, intermediate_size: 512 }));
      },
      (
        dir,
      ) => ["`model.layers.0.mlp.gate_proj.weight`", `${dir}/model.safetensors`, "[384, 256]", "[512, 256]"],
    ],
    [
      "an o_proj bias (not Qwen2)",
      rewriteWeights((tensors) => [
        ...tensors,
        {
          name: "model.layers.1.self_attn.o_proj.bias",
          dtype: "BF16",
          shape: [256],
          values: new Float32Array(256),
        },
      ]),
      () => ["`model.layers.1.self_attn.o_proj.bias`", "not a weight"],
    ],
    [
      "a third layer the config does not have",
      rewriteWeights((tensors) => [
        ...tensors,
        {
          name: "model.layers.2.input_layernorm.weight",
          dtype: "BF16",
          shape: [256],
          values: new Float32Array(256),
        },
      ]),
      () => ["`model.layers.2.input_layernorm.weight`", "2 layers"],
    ],
    [
      "a NaN weight",
      rewriteWeights((tensors) =>
        tensors.map((tensor) =>
          tensor.name === "model.norm.weight"
            ? { ...tensor, values: Float32Array.from(tensor.values, (v, i) => i === 7 ? NaN : v) }
            : tensor
        )
      ),
      () => ["`model.norm.weight`", "NaN at element 7"],
    ],
    [
      "a truncated weights file",
      async (dir) => {
        const bytes = await Deno.readFile(`${dir}/model.safetensors`);
        await Deno.writeFile(`${dir}/model.safetensors`, bytes.subarray(0, bytes.length - 1000));
      },
      (dir) => ["`lm_head.weight`", `${dir}/model.safetensors`, "truncated"],
    ],
  ];
  for (const [name, edit, mentions] of cases) {
    await t.step(name, async () => {
      const dir = await editedCheckpoint(name.replaceAll(/\W+/g, "-"), edit);
      let model: Qwen2ForCausalLM | undefined;
      await assertCheckpointError(async () => {
        model = await Qwen2ForCausalLM.fromPretrained(dir);
      }, mentions(dir));
      assert.equal(model, undefined);
    });
  }
  await t.step(
    "sharded checkpoints: a missing shard, and a tensor in another shard than the index says",
    async () => {
      const index = JSON.parse(await Deno.readTextFile(`${shardedDir}/model.safetensors.index.json`));
      const shards = [...new Set(Object.values(index.weight_map) as string[])].sort();
      const dir = `${scratch}/sharded-broken`;
      await Deno.mkdir(dir);
      await Deno.copyFile(`${shardedDir}/config.json`, `${dir}/config.json`);
      await Deno.copyFile(
        `${shardedDir}/model.safetensors.index.json`,
        `${dir}/model.safetensors.index.json`,
      );
      await Deno.copyFile(`${shardedDir}/${shards[0]}`, `${dir}/${shards[0]}`);
      await Deno.copyFile(`${shardedDir}/${shards[1]}`, `${dir}/${shards[1]}`);
      await assertCheckpointError(() => Qwen2ForCausalLM.fromPretrained(dir), [
        `${dir}/${shards[2]}`,
        "cannot be read",
      ]);
      const moved = Object.keys(index.weight_map)[0];
      index.weight_map[moved] = shards[2];
      await Deno.copyFile(`${shardedDir}/${shards[2]}`, `${dir}/${shards[2]}`);
      await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify(index));
      await assertCheckpointError(() => Qwen2ForCausalLM.fromPretrained(dir), [
        `\`${moved}\``,
        shards[0],
        "maps it to",
      ]);
      await Deno.writeTextFile(`${dir}/model.safetensors.index.json`, JSON.stringify({ weight_map: [1] }));
      await assertCheckpointError(() => Qwen2ForCausalLM.fromPretrained(dir), ["`weight_map`"]);
    },
  );
  await t.step("bad forward inputs are MagiAttnInputErrors", async () => {
    const model = await Qwen2ForCausalLM.fromPretrained(untiedDir);
    await assert.rejects(
      () => model.forward([1, VOCAB]),
      (error: Error) => error instanceof MagiAttnInputError && error.message.includes("`tokenIds[1]`"),
    );
    await assert.rejects(() => model.forward([]), MagiAttnInputError);
    await assert.rejects(() => model.forward([1, 2], [0]), /`positionIds` has 1 entries for 2 tokens/);
    await assert.rejects(() => model.forward([1, 2], [0, -1]), /`positionIds\[1\]`/);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The forward against the float64 oracle, tied/untied/sharded loading, and the attention dispatch.

const untied = await Qwen2ForCausalLM.fromPretrained(untiedDir);
const untiedSdpa = await Qwen2ForCausalLM.fromPretrained(untiedDir, { attnImplementation: "sdpa" });
const untiedWeights = (await readSafetensors(`${untiedDir}/model.safetensors`)).tensors;

/** Logits of `tokens` run alone (positions 0..n-1) by `model`. */
function alone(model: Qwen2ForCausalLM, ids: readonly number[]): Promise<Float32Array> {
  return model.forward(ids);
}

Deno.test("the forward equals a float64 oracle written from the architecture (magi and sdpa)", async () => {
  const weights = new Map([...untiedWeights].map(([name, tensor]) => [name, tensor.data]));
  for (
    const [ids, positions] of [[tokens(23, 1), null], [tokens(9, 2), [
      5,
      6,
      7,
      8,
      9,
      10,
      11,
      12,
      13,
    ]]] as const
  ) {
    const expected = oracleQwen2Logits(
      SYNTHETIC_QWEN2_CONFIG,
      weights,
      ids,
      positions ?? ids.map((_, index) => index),
    ).flat();
    for (const model of [untied, untiedSdpa]) {
      const error = logitError(await model.forward(ids, positions ?? undefined), expected);
      assert.ok(error.maxExpected > 1, `logits of unit scale (${error.maxExpected})`);
      assert.ok(
        error.maxRel <= FLOAT32_RELATIVE / 10,
        `${model.config.attnImplementation}: ${JSON.stringify(error)}`,
      );
    }
  }
});

Deno.test("tied, untied and sharded checkpoints load the weights they hold", async () => {
  const ids = tokens(12, 4);
  const tied = await Qwen2ForCausalLM.fromPretrained(tiedDir);
  assert.equal(tied.lmHead.weight, tied.model.embedTokens, "the tied head is the embedding itself");
  // Oracle: the tied checkpoint's weights with the embedding as an explicit LM head.
  const tiedWeights = (await readSafetensors(`${tiedDir}/model.safetensors`)).tensors;
  assert.ok(!tiedWeights.has("lm_head.weight"));
  const explicit = new Map([...tiedWeights].map(([name, tensor]) => [name, tensor.data]));
  explicit.set("lm_head.weight", explicit.get("model.embed_tokens.weight")!);
  const asUntied = new Qwen2ForCausalLM({ ...tied.config, tieWordEmbeddings: false }, explicit);
  assert.deepEqual(await tied.forward(ids), await asUntied.forward(ids));
  // The same seed's untied model differs only in the head: same hidden states, other logits.
  assert.ok(logitError(await untied.forward(ids), await tied.forward(ids)).maxAbs > 0.1);
  const sharded = await Qwen2ForCausalLM.fromPretrained(shardedDir);
  assert.deepEqual(await sharded.forward(ids), await untied.forward(ids));
});

Deno.test("attention goes through the registry with HF layouts [1, H, S, D]", async () => {
  const seen: string[] = [];
  AttentionInterface.register("qwen2-test-recording", (module, query, key, value, mask, options) => {
    seen.push(
      `${module.constructor.name} q[${query.shape}] k[${key.shape}] v[${value.shape}] ${query.dtype}`,
    );
    assert.equal(mask, null);
    assert.equal(options.scaling, 1 / 8);
    return sdpaAttentionForward(module, query, key, value, mask, options);
  });
  const model = await Qwen2ForCausalLM.fromPretrained(untiedDir, {
    attnImplementation: "qwen2-test-recording",
  });
  const ids = tokens(7, 5);
  assert.deepEqual(await model.forward(ids), await untiedSdpa.forward(ids));
  assert.deepEqual(seen, Array(2).fill("Qwen2Attention q[1,4,7,64] k[1,2,7,64] v[1,2,7,64] float32"));
  assert.ok(ALL_ATTENTION_FUNCTIONS.has("qwen2-test-recording"));
  // An unregistered name fails at the first attention call, naming the field.
  const unknown = await Qwen2ForCausalLM.fromPretrained(untiedDir, {
    attnImplementation: "flash_attention_9",
  });
  await assert.rejects(() => unknown.forward(ids), /`attnImplementation` is "flash_attention_9"/);
});

// ---------------------------------------------------------------------------------------------------------
// Packing: prefix-tree rollouts and documents in one forward, each sample equal to its run alone.

/** Worst relative error of each sample's packed rows against the sample run alone. */
async function packedVersusAlone(
  packedModel: Qwen2ForCausalLM,
  aloneModel: Qwen2ForCausalLM,
  packed: PackedSequence,
  packedLogits: Float32Array,
): Promise<number[]> {
  const errors: number[] = [];
  for (const [sample, rows] of packed.sampleRows.entries()) {
    const reference = await alone(aloneModel, packed.sampleTokenIds[sample]);
    errors.push(logitError(gatherRows(packedLogits, rows, packedModel.config.vocabSize), reference).maxRel);
  }
  return errors;
}

const flatTree = packPrefixTree([tokens(24, 10), tokens(16, 11), tokens(5, 12), tokens(11, 13)], [[0, 1], [
  0,
  2,
], [
  0,
  3,
]]);
const nestedTree = packPrefixTree(
  [tokens(20, 20), tokens(6, 21), tokens(9, 22), tokens(4, 23), tokens(12, 24)],
  [[0, 1, 2], [0, 1, 3], [0, 4]],
);

Deno.test("prefix-tree rollouts packed in one forward equal each sample run alone", async (t) => {
  for (const [name, packed] of [["prompt + 3 completions", flatTree], ["nested tree", nestedTree]] as const) {
    await t.step(name, async () => {
      const packedLogits = await forwardPacked(untied, packed);
      const errors = await packedVersusAlone(untied, untiedSdpa, packed, packedLogits);
      assert.equal(errors.length, 3);
      for (const error of errors) assert.ok(error <= FLOAT32_RELATIVE, `${errors}`);
      // Closing the step cleared the stamps: the same model now runs a sample alone (no stale packed mask).
      const first = packed.sampleTokenIds[0];
      assert.ok(
        logitError(await untied.forward(first), await alone(untiedSdpa, first)).maxRel <= FLOAT32_RELATIVE,
      );
      // The same packing under a plain causal mask (the spec ignored) is wrong for the later samples:
      // the comparison can fail, and the mask is what makes it pass.
      const plainCausal = await untiedSdpa.forward(packed.tokenIds, packed.positionIds);
      const wrong = await packedVersusAlone(untiedSdpa, untiedSdpa, packed, plainCausal);
      assert.ok(wrong[1] > 1e-2 && wrong[2] > 1e-2, `${wrong}`);
    });
  }
  await t.step("positions come from prefixTreeLayout: each node continues its path", () => {
    assert.deepEqual(
      [...nestedTree.positionIds],
      [
        ...Array(26).keys(),
        ...Array.from({ length: 9 }, (_, i) => 26 + i),
        ...[26, 27, 28, 29],
        ...Array.from({ length: 12 }, (_, i) => 20 + i),
      ],
    );
    assert.deepEqual(
      nestedTree.positionIds,
      prefixTreeLayout([20, 6, 9, 4, 12], [[0, 1, 2], [0, 1, 3], [0, 4]]).positionIds,
    );
  });
});

Deno.test("packed documents with restarting positions equal each document run alone", async () => {
  const packed = packDocuments([tokens(17, 30), tokens(5, 31), tokens(11, 32), tokens(1, 33)]);
  assert.deepEqual([...packed.positionIds.slice(15, 25)], [15, 16, 0, 1, 2, 3, 4, 0, 1, 2]);
  const packedLogits = await forwardPacked(untied, packed);
  for (const error of await packedVersusAlone(untied, untiedSdpa, packed, packedLogits)) {
    assert.ok(error <= FLOAT32_RELATIVE, `${error}`);
  }
  // RoPE is relative: inside a causal document, shifting every position by one constant changes nothing,
  // so positions that do not restart give the same logits (up to rounding).
  setAttnSpecOnAttention(untied, packed.spec);
  const unrestarted = await untied.forward(packed.tokenIds);
  closeAttnSpecStep(untied); // also clears the stamps
  for (const error of await packedVersusAlone(untied, untiedSdpa, packed, unrestarted)) {
    assert.ok(error <= FLOAT32_RELATIVE, `${error}`);
  }
});

Deno.test("position ids matter: the tree's mask with positions 0..T-1 is wrong for later completions", async () => {
  // Completions 2 and 3 sit after completion 1 in the packing; numbered straight through, their distance to
  // the prompt grows by the earlier completions' lengths, and RoPE sees it.
  setAttnSpecOnAttention(untied, flatTree.spec);
  const straight = await untied.forward(flatTree.tokenIds);
  closeAttnSpecStep(untied); // also clears the stamps
  const errors = await packedVersusAlone(untied, untiedSdpa, flatTree, straight);
  assert.ok(errors[0] <= FLOAT32_RELATIVE && errors[1] > 1e-3 && errors[2] > 1e-3, `${errors}`);
});

Deno.test("the guard: a Qwen2 model that does not run magi attention raises at the step boundary", async (t) => {
  await t.step('configured "sdpa": closing the step raises AttnSpecNotConsumedError', async () => {
    const model = await Qwen2ForCausalLM.fromPretrained(untiedDir, { attnImplementation: "sdpa" });
    assert.equal(setAttnSpecOnAttention(model, flatTree.spec), 2);
    await model.forward(flatTree.tokenIds, flatTree.positionIds);
    assert.throws(() => closeAttnSpecStep(model), (error: unknown) => {
      assert.ok(error instanceof AttnSpecNotConsumedError);
      assert.equal(error.attnImplementation, "sdpa");
      assert.match(error.message, /Qwen2ForCausalLM \(2 attention module\(s\)/);
      return true;
    });
    // The next step's stamping raises too, until the guard is reset.
    assert.throws(() => setAttnSpecOnAttention(model, flatTree.spec), AttnSpecNotConsumedError);
    resetAttnSpecGuard(model);
    await assert.rejects(() => forwardPacked(model, flatTree), AttnSpecNotConsumedError);
    resetAttnSpecGuard(model);
  });
  await t.step('every layer forced to "sdpa" while the config says "magi": raises', async () => {
    const model = await Qwen2ForCausalLM.fromPretrained(untiedDir);
    for (const layer of model.model.layers) layer.selfAttn.attnImplementation = "sdpa";
    await assert.rejects(() => forwardPacked(model, nestedTree), AttnSpecNotConsumedError);
    resetAttnSpecGuard(model);
    for (const layer of model.model.layers) layer.selfAttn.attnImplementation = undefined;
    await forwardPacked(model, nestedTree); // consumed: no error
  });
});

// ---------------------------------------------------------------------------------------------------------
// The fixture reader (on a file written here in make_fixture.py's format) and the transformers fixture.

Deno.test("the fixture reader checks the expected file against its own inputs", async (t) => {
  const dir = `${scratch}/fake-fixture`;
  await Deno.mkdir(dir);
  const nodeTokens = [tokens(3, 40), tokens(2, 41), tokens(2, 42)];
  const samplePaths = [[0, 1], [0, 2]];
  const inputs = (overrides: { input_ids?: number[] } = {}) => ({
    format: QWEN2_FIXTURE_FORMAT,
    seed: 1,
    versions: { torch: "x" },
    reference: { attn_implementation: "eager", dtype: "float32", device: "cpu" },
    prefix_tree: {
      node_tokens: nodeTokens,
      sample_paths: samplePaths,
      packed_position_ids: [0, 1, 2, 3, 4, 3, 4],
    },
    documents: { tokens: [tokens(2, 43)] },
    samples: [
      ...samplePaths.map((path, index) => ({
        name: `tree/${index}`,
        kind: "tree",
        index,
        input_ids: index === 1 && overrides.input_ids
          ? overrides.input_ids
          : path.flatMap((node) => nodeTokens[node]),
        position_ids: [0, 1, 2, 3, 4],
        logits: `logits/tree/${index}`,
        max_abs_logit: 1,
      })),
      {
        name: "document/0",
        kind: "document",
        index: 0,
        input_ids: tokens(2, 43),
        position_ids: [0, 1],
        logits: "logits/document/0",
        max_abs_logit: 1,
      },
    ],
  });
  const write = (metadata: unknown, rows = 5) =>
    Deno.writeFile(
      `${dir}/expected.safetensors`,
      encodeSafetensors(
        [
          { name: "logits/tree/0", dtype: "F32", shape: [5, 4], values: new Float32Array(20).fill(0.5) },
          { name: "logits/tree/1", dtype: "F32", shape: [rows, 4], values: new Float32Array(rows * 4) },
          { name: "logits/document/0", dtype: "F32", shape: [2, 4], values: new Float32Array(8) },
        ],
        { fixture: JSON.stringify(metadata) },
      ),
    );
  await t.step("a consistent file reads", async () => {
    await write(inputs());
    const fixture = await readQwen2Fixture(dir);
    assert.equal(fixture.vocabSize, 4);
    assert.deepEqual(fixture.samples.map((sample) => sample.name), ["tree/0", "tree/1", "document/0"]);
    assert.deepEqual([...fixture.samples[0].logits.slice(0, 2)], [0.5, 0.5]);
  });
  await t.step("inconsistent files are CheckpointErrors", async () => {
    await write(inputs({ input_ids: [1, 2, 3, 4, 5] }));
    await assertCheckpointError(() => readQwen2Fixture(dir), ["samples.1", "not tree 1"]);
    await write(inputs(), 4);
    await assertCheckpointError(() => readQwen2Fixture(dir), ["`logits/tree/1`", "[4, 4]"]);
    await write({ ...inputs(), format: "v0" });
    await assertCheckpointError(() => readQwen2Fixture(dir), ["__metadata__.fixture.format", "regenerate"]);
  });
  await t.step("a missing fixture says how to make it", async () => {
    await assertCheckpointError(() => readQwen2Fixture(`${scratch}/no-fixture`), [
      "does not exist",
      "make_fixture.py",
    ]);
  });
});

Deno.test({
  name:
    "transformers fixture: float32 CPU logits match Qwen2ForCausalLM within 1e-4 relative on every sample",
  // tests/fixtures/qwen2-tiny/ was made by examples/qwen2/make_fixture.py on the GPU machine (transformers
  // 5.17, torch 2.11); the test fails (it does not pass silently) when the folder is missing.
  async fn(t) {
    if (!qwen2FixtureExists()) {
      assert.fail(`the fixture ${QWEN2_FIXTURE_DIR} is missing: ${QWEN2_FIXTURE_HOWTO}`);
    }
    const fixture = await readQwen2Fixture();
    const model = await Qwen2ForCausalLM.fromPretrained(fixture.dir);
    const sdpa = await Qwen2ForCausalLM.fromPretrained(fixture.dir, { attnImplementation: "sdpa" });
    assert.equal(model.config.vocabSize, fixture.vocabSize);
    const { node_tokens: nodeTokens, sample_paths: samplePaths } = fixture.inputs.prefix_tree;
    const tree = packPrefixTree(nodeTokens, samplePaths);
    const documents = packDocuments(fixture.inputs.documents.tokens);
    const report: string[] = [];
    const check = (label: string, logits: Float32Array, expected: Float32Array) => {
      const error = logitError(logits, expected);
      report.push(
        `${label.padEnd(28)} max|Δ| ${error.maxAbs.toExponential(2)}  rel ${error.maxRel.toExponential(2)}`,
      );
      assert.ok(error.maxRel <= FLOAT32_RELATIVE, `${label}: ${JSON.stringify(error)}`);
    };
    await t.step("the tree's position ids are transformers' (prefixTreeLayout vs the script)", () => {
      assert.deepEqual([...tree.positionIds], fixture.inputs.prefix_tree.packed_position_ids);
    });
    await t.step("each sample alone, magi and sdpa", async () => {
      for (const sample of fixture.samples) {
        check(
          `${sample.name} alone (magi)`,
          await model.forward(sample.inputIds, sample.positionIds),
          sample.logits,
        );
        check(
          `${sample.name} alone (sdpa)`,
          await sdpa.forward(sample.inputIds, sample.positionIds),
          sample.logits,
        );
      }
    });
    await t.step("packed: the prefix tree and the documents, one forward each", async () => {
      const packedTree = await forwardPacked(model, tree);
      const packedDocuments = await forwardPacked(model, documents);
      for (const sample of fixture.samples) {
        const [packed, logits] = sample.kind === "tree" ? [tree, packedTree] : [documents, packedDocuments];
        check(
          `${sample.name} packed`,
          gatherRows(logits, packed.sampleRows[sample.index], fixture.vocabSize),
          sample.logits,
        );
      }
    });
    console.log(
      `\nQwen2 fixture (transformers ${fixture.inputs.versions.transformers}), CPU float32:\n${
        report.join("\n")
      }`,
    );
  },
});

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(scratch, { recursive: true });
  } catch {
    // already gone
  }
});

Deno.test("`deno task demo --qwen2 DIR` runs the Qwen2 part on a checkpoint folder", async () => {
  const demo = new URL("../scripts/demo.ts", import.meta.url);
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-read",
      "--allow-env",
      "--allow-ffi",
      "--allow-write",
      demo.pathname,
      "--qwen2",
      untiedDir,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
  assert.equal(code, 0, output);
  assert.match(output, /OK: every completion's logits match its separate run/); // the tiny decoder still runs
  assert.ok(
    output.includes(`Qwen2 from ${untiedDir}: 2 layers, hidden 256, 4 query / 2 kv heads of 64`),
    output,
  );
  const rows = [...output.matchAll(/^ tree\/\d+ +\| +\d+ \| +(\S+) \/ (\S+) \|/gm)];
  assert.equal(rows.length, 3, output);
  for (const [, maxAbs] of rows) assert.ok(Number(maxAbs) <= 2e-2, output);
  assert.match(output, /OK: every Qwen2 sample's packed logits match its separate run/);
  assert.match(output, /the Qwen2 model configured "sdpa" raised AttnSpecNotConsumedError/);
});
