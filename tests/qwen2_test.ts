/**
 * The Qwen2 decoder of examples/qwen2 as a real client of the library: its forward against a float64
 * oracle written from the architecture's definition, packed prefix-tree rollouts and packed documents
 * against each sample run alone, the consumption guard on a misconfigured model, and the demo on a
 * checkpoint folder. Loading errors: `qwen2_loading_test.ts`; transformers' logits: `qwen2_fixture_test.ts`.
 */

import assert from "node:assert/strict";
import {
  ALL_ATTENTION_FUNCTIONS,
  AttentionInterface,
  AttnSpecNotConsumedError,
  closeAttnSpecStep,
  prefixTreeLayout,
  resetAttnSpecGuard,
  sdpaAttentionForward,
  setAttnSpecOnAttention,
} from "../mod.ts";
import { Qwen2ForCausalLM } from "../examples/qwen2/model.ts";
import {
  forwardPacked,
  gatherRows,
  logitError,
  packDocuments,
  type PackedSequence,
  packPrefixTree,
} from "../examples/qwen2/packing.ts";
import { readSafetensors } from "../examples/qwen2/safetensors.ts";
import { SYNTHETIC_QWEN2_CONFIG } from "../examples/qwen2/synthetic.ts";
import { oracleQwen2Logits } from "./qwen2_oracle.ts";
import { FLOAT32_RELATIVE, shardedDir, tiedDir, tokens, untiedDir } from "./support/qwen2_checkpoints.ts";

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
