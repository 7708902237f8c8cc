/**
 * The Qwen2 decoder of examples/qwen2 with its attention in bf16 on the CUDA backend:
 * - packed prefix-tree rollouts and packed documents equal each sample run alone (on a synthetic
 *   checkpoint, so it needs no fixture);
 * - every sample of the transformers fixture (tests/fixtures/qwen2-tiny, from examples/qwen2/make_fixture.py)
 *   matches transformers' float32 logits with the parity tests' criteria, adapted to logits: relative L2
 *   error ≤ 0.05 (upstream's rtol for the attention output), and max |ours − transformers| ≤ 2 × the error
 *   of the low-precision reference (the same bf16 attention inputs computed exactly on the CPU) + ε, with
 *   ε = 1e-2 · max |transformers| for the kernel's own bf16 rounding of P and the output.
 * Prints a per-sample table for bench/GPU-LOG.md.
 *
 * Without a usable GPU every test is registered as ignored. With `MAGI_PARITY_DRY_RUN=1` they run anyway:
 * where "auto" finds no GPU the bf16 attention runs on the CPU reference, which checks the harness only.
 */

import assert from "node:assert/strict";
import {
  AttentionInterface,
  backendInfo,
  fromFloat32,
  type HostTensor,
  magiAttentionForward,
  toFloat32,
} from "../../mod.ts";
import { probeCudaBackend } from "../../testing.ts";
import { backendNotice } from "../support/backend_notice.ts";
import {
  QWEN2_FIXTURE_DIR,
  QWEN2_FIXTURE_HOWTO,
  qwen2FixtureExists,
  readQwen2Fixture,
} from "../../examples/qwen2/fixture.ts";
import { Qwen2ForCausalLM } from "../../examples/qwen2/model.ts";
import {
  forwardPacked,
  gatherRows,
  type LogitError,
  logitError,
  packDocuments,
  type PackedSequence,
  packPrefixTree,
} from "../../examples/qwen2/packing.ts";
import { writeSyntheticQwen2Checkpoint } from "../../examples/qwen2/synthetic.ts";

const DRY_RUN = Deno.env.get("MAGI_PARITY_DRY_RUN") === "1";
const probe = DRY_RUN ? { available: true, reason: "" } : probeCudaBackend();
const ignore = !probe.available;
if (ignore) console.log(backendNotice("GPU Qwen2 tests skipped: ", backendInfo()));

/** Upstream's relative-L2 tolerance of the attention output (bf16). */
const RTOL_OUT = 0.05;
/** Packed vs alone, both bf16 on the GPU: only the kernel's tiling differs, so far below RTOL_OUT. */
const PACKED_RTOL = 1e-2;

/**
 * The low-precision reference: the bf16 q, k, v the model hands to attention, computed exactly (float32
 * inputs make "auto" pick the CPU reference) and rounded back to bf16 like the kernel's output.
 */
AttentionInterface.register("magi-bf16-on-cpu", async (module, query, key, value, mask, options) => {
  const widen = (t: HostTensor) => fromFloat32(toFloat32(t), t.shape, "float32");
  const [out] = await magiAttentionForward(module, widen(query), widen(key), widen(value), mask, options);
  return [fromFloat32(toFloat32(out), out.shape, query.dtype), null];
});

function tokens(length: number, seed: number, vocab: number): number[] {
  return Array.from({ length }, (_, index) => (index * 7919 + seed * 104729 + 13) % vocab);
}

function row(name: string, count: number, error: LogitError): string {
  return `| ${name.padEnd(28)} | ${String(count).padStart(6)} | ${
    error.maxAbs.toExponential(2).padStart(9)
  } | ${error.relL2.toExponential(2).padStart(9)} |`;
}

/** Per sample: its packed rows of `packedLogits` against `aloneLogits[sample]`. */
function packedErrors(
  packed: PackedSequence,
  packedLogits: Float32Array,
  alone: Float32Array[],
  vocab: number,
) {
  return packed.sampleRows.map((rows, sample) =>
    logitError(gatherRows(packedLogits, rows, vocab), alone[sample])
  );
}

Deno.test({
  name: "qwen2 on CUDA (bf16 attention): packed prefix tree and documents equal each sample alone",
  ignore,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "magi-qwen2-gpu-" });
    try {
      await writeSyntheticQwen2Checkpoint(dir, { seed: 5 });
      const model = await Qwen2ForCausalLM.fromPretrained(dir, { attentionDtype: "bfloat16" });
      const float32 = await Qwen2ForCausalLM.fromPretrained(dir, { attnImplementation: "sdpa" });
      const vocab = model.config.vocabSize;
      console.log(`attention backend for bf16: ${backendInfo().backend}${DRY_RUN ? " (dry run)" : ""}`);
      const table = [
        "| sample (synthetic)           | tokens | max abs   | rel L2    |",
        "|---|---|---|---|",
      ];
      const cases: [string, PackedSequence][] = [
        [
          "tree",
          packPrefixTree([
            tokens(40, 1, vocab),
            tokens(24, 2, vocab),
            tokens(9, 3, vocab),
            tokens(31, 4, vocab),
          ], [[0, 1], [0, 2], [0, 3]]),
        ],
        ["documents", packDocuments([tokens(33, 5, vocab), tokens(7, 6, vocab), tokens(20, 7, vocab)])],
      ];
      for (const [name, packed] of cases) {
        const packedLogits = await forwardPacked(model, packed);
        const alone = await Promise.all(packed.sampleTokenIds.map((ids) => model.forward(ids)));
        for (const [sample, error] of packedErrors(packed, packedLogits, alone, vocab).entries()) {
          table.push(row(`${name}/${sample} packed vs alone`, packed.sampleRows[sample].length, error));
          assert.ok(error.relL2 <= PACKED_RTOL, `${name}/${sample}: ${JSON.stringify(error)}`);
          const exact = await float32.forward(packed.sampleTokenIds[sample]);
          const vsFloat32 = logitError(alone[sample], exact);
          table.push(row(`${name}/${sample} bf16 vs fp32`, packed.sampleRows[sample].length, vsFloat32));
          assert.ok(
            vsFloat32.relL2 <= RTOL_OUT,
            `${name}/${sample} vs float32: ${JSON.stringify(vsFloat32)}`,
          );
        }
      }
      console.log(table.join("\n"));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "qwen2 on CUDA (bf16 attention): the transformers fixture, alone and packed, within the parity criteria",
  ignore,
  async fn() {
    if (!qwen2FixtureExists()) {
      assert.fail(`the fixture ${QWEN2_FIXTURE_DIR} is missing: ${QWEN2_FIXTURE_HOWTO}`);
    }
    const fixture = await readQwen2Fixture();
    const model = await Qwen2ForCausalLM.fromPretrained(fixture.dir, { attentionDtype: "bfloat16" });
    const lowPrecision = await Qwen2ForCausalLM.fromPretrained(fixture.dir, {
      attentionDtype: "bfloat16",
      attnImplementation: "magi-bf16-on-cpu",
    });
    const vocab = fixture.vocabSize;
    const tree = packPrefixTree(
      fixture.inputs.prefix_tree.node_tokens,
      fixture.inputs.prefix_tree.sample_paths,
    );
    const documents = packDocuments(fixture.inputs.documents.tokens);
    const packedTree = await forwardPacked(model, tree);
    const packedDocuments = await forwardPacked(model, documents);
    const table = [
      `transformers ${fixture.inputs.versions.transformers}, torch ${fixture.inputs.versions.torch}; ` +
      `bf16 attention on ${backendInfo().backend}${DRY_RUN ? " (dry run)" : ""}`,
      "| sample (fixture)             | tokens | max abs   | rel L2    |",
      "|---|---|---|---|",
    ];
    for (const sample of fixture.samples) {
      const bound = (lowp: LogitError) => 2 * lowp.maxAbs + 1e-2 * lowp.maxExpected;
      const lowp = logitError(await lowPrecision.forward(sample.inputIds, sample.positionIds), sample.logits);
      const alone = logitError(await model.forward(sample.inputIds, sample.positionIds), sample.logits);
      const [packed, logits] = sample.kind === "tree" ? [tree, packedTree] : [documents, packedDocuments];
      const packedError = logitError(
        gatherRows(logits, packed.sampleRows[sample.index], vocab),
        sample.logits,
      );
      table.push(row(`${sample.name} alone`, sample.inputIds.length, alone));
      table.push(row(`${sample.name} packed`, sample.inputIds.length, packedError));
      table.push(row(`${sample.name} bf16 on CPU`, sample.inputIds.length, lowp));
      for (const [label, error] of [["alone", alone], ["packed", packedError]] as const) {
        assert.ok(error.relL2 <= RTOL_OUT, `${sample.name} ${label}: rel L2 ${error.relL2} > ${RTOL_OUT}`);
        assert.ok(
          error.maxAbs <= bound(lowp),
          `${sample.name} ${label}: max abs ${error.maxAbs} > ${
            bound(lowp)
          } (bf16 CPU reference: ${lowp.maxAbs})`,
        );
      }
    }
    console.log(table.join("\n"));
  },
});
