/**
 * The Qwen2 example's loaders as a client of the library: its safetensors and config readers and
 * `fromPretrained`, each loading error naming the tensor, field or file and the fix.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../mod.ts";
import { bf16BitsToFloat32, float32ToBf16Bits } from "../testing.ts";
import { parseQwen2Config, readQwen2Config } from "../examples/qwen2/config.ts";
import { Qwen2ForCausalLM } from "../examples/qwen2/model.ts";
import { encodeSafetensors, parseSafetensors, readSafetensors } from "../examples/qwen2/safetensors.ts";
import { SYNTHETIC_QWEN2_CONFIG } from "../examples/qwen2/synthetic.ts";
import {
  assertCheckpointError,
  editedCheckpoint,
  rewriteWeights,
  scratch,
  shardedDir,
  untiedDir,
  VOCAB,
} from "./support/qwen2_checkpoints.ts";

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
