/**
 * The Qwen2 fixture reader (on a file written here in make_fixture.py's format) and, with the committed
 * fixture, transformers' own logits against ours.
 */

import assert from "node:assert/strict";
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
  packPrefixTree,
} from "../examples/qwen2/packing.ts";
import { encodeSafetensors } from "../examples/qwen2/safetensors.ts";
import { assertCheckpointError, FLOAT32_RELATIVE, scratch, tokens } from "./support/qwen2_checkpoints.ts";

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
