/**
 * The demo's Qwen2 part: load an HF Qwen2 checkpoint folder, pack a prefix tree of rollouts into one
 * sequence, run it with magi attention in one forward, and show each sample's logits against the sample
 * run alone and, where the folder is the transformers fixture, against transformers' own logits. Then the
 * guard on the same model configured "sdpa".
 *
 * Run: `deno task demo --qwen2 DIR` (by default the committed fixture, tests/fixtures/qwen2-tiny, when
 * present), or on its own: `deno run --allow-read --allow-env --allow-ffi examples/qwen2/demo.ts [DIR]`.
 * @module
 */

import { AttnSpecNotConsumedError, backendInfo, resetAttnSpecGuard } from "../../mod.ts";
import { CheckpointError } from "./errors.ts";
import { QWEN2_FIXTURE_DIR, QWEN2_FIXTURE_HOWTO, qwen2FixtureExists, readQwen2Fixture } from "./fixture.ts";
import { Qwen2ForCausalLM } from "./model.ts";
import { forwardPacked, gatherRows, type LogitError, logitError, packPrefixTree } from "./packing.ts";

/** Where the demo takes its checkpoint from: `--qwen2 DIR`, else the fixture folder if it exists. */
export function qwen2DemoDir(args: readonly string[]): string | null {
  const flag = args.indexOf("--qwen2");
  if (flag >= 0) {
    const dir = args[flag + 1];
    if (!dir || dir.startsWith("--")) {
      throw new CheckpointError(
        { file: "(command line)", field: "--qwen2" },
        "has no folder",
        "pass --qwen2 DIR",
      );
    }
    return dir;
  }
  return qwen2FixtureExists() ? QWEN2_FIXTURE_DIR : null;
}

function format(error: LogitError): string {
  return `${error.maxAbs.toExponential(2)} / ${error.relL2.toExponential(2)}`;
}

/**
 * Runs the Qwen2 demo for the folder `args` names (see {@linkcode qwen2DemoDir}); prints why it skips when
 * there is none. Returns false when a check fails.
 */
export async function runQwen2Demo(args: readonly string[]): Promise<boolean> {
  const dir = qwen2DemoDir(args);
  if (dir === null) {
    console.log(`\nQwen2: skipped (no checkpoint): pass --qwen2 DIR, or ${QWEN2_FIXTURE_HOWTO}.`);
    return true;
  }
  const onGpu = backendInfo().backend === "cuda";
  const attentionDtype = onGpu ? "bfloat16" : "float32";
  const model = await Qwen2ForCausalLM.fromPretrained(dir, { attentionDtype });
  const { config } = model;
  console.log(
    `\nQwen2 from ${dir}: ${config.numHiddenLayers} layers, hidden ${config.hiddenSize}, ` +
      `${config.numAttentionHeads} query / ${config.numKeyValueHeads} kv heads of ${config.headDim}, ` +
      `vocab ${config.vocabSize}, ${config.tieWordEmbeddings ? "tied" : "untied"} LM head; ` +
      `attention in ${attentionDtype} (${onGpu ? "CUDA" : "CPU reference"})`,
  );
  // The fixture's tree and transformers' logits when the folder has them; otherwise a tree of our own.
  const fixture = qwen2FixtureExists(dir) ? await readQwen2Fixture(dir) : null;
  const vocab = config.vocabSize;
  const ids = (length: number, seed: number) =>
    Array.from({ length }, (_, i) => (i * 7919 + seed * 104729) % vocab);
  const nodeTokens = fixture?.inputs.prefix_tree.node_tokens ??
    [ids(32, 1), ids(16, 2), ids(5, 3), ids(23, 4)];
  const samplePaths = fixture?.inputs.prefix_tree.sample_paths ?? [[0, 1], [0, 2], [0, 3]];
  const packed = packPrefixTree(nodeTokens, samplePaths);
  const packedLogits = await forwardPacked(model, packed);
  console.log(
    `packed prefix tree: ${packed.tokenIds.length} tokens for ${samplePaths.length} samples ` +
      `(${
        packed.sampleRows.map((rows) => rows.length).join(" + ")
      } tokens alone), one forward, spec consumed`,
  );
  // Float32 on the CPU: the issue's 1e-4 relative bound; bf16 attention on the GPU: the parity tests' rel L2.
  const withinBound = (error: LogitError) => onGpu ? error.relL2 <= 0.05 : error.maxRel <= 1e-4;
  let ok = true;
  console.log(
    " sample  | tokens | packed vs alone: max|Δ| / rel L2 | packed vs transformers: max|Δ| / rel L2",
  );
  for (const [sample, rows] of packed.sampleRows.entries()) {
    const packedRows = gatherRows(packedLogits, rows, vocab);
    const alone = logitError(packedRows, await model.forward(packed.sampleTokenIds[sample]));
    const expected = fixture?.samples.find((item) => item.kind === "tree" && item.index === sample);
    const versus = expected ? logitError(packedRows, expected.logits) : null;
    ok &&= withinBound(alone) && (versus === null || withinBound(versus));
    console.log(
      ` tree/${sample}  | ${String(rows.length).padStart(6)} | ${format(alone).padStart(32)} | ${
        versus ? format(versus) : "(no transformers logits in this folder)"
      }`,
    );
  }
  if (!ok) {
    console.error(
      `FAIL: Qwen2 packed logits are outside the ${onGpu ? "bf16 rel L2 0.05" : "1e-4 relative"} bound`,
    );
    return false;
  }
  console.log(
    `OK: every Qwen2 sample's packed logits match its separate run${
      fixture ? ` and transformers ${fixture.inputs.versions.transformers}` : ""
    }`,
  );
  // The guard on the real model: configured "sdpa", the stamped spec goes unused and the step says so.
  const sdpa = await Qwen2ForCausalLM.fromPretrained(dir, { attnImplementation: "sdpa" });
  try {
    await forwardPacked(sdpa, packed);
    console.error('FAIL: the guard did not fire for the Qwen2 model configured "sdpa"');
    return false;
  } catch (error) {
    if (!(error instanceof AttnSpecNotConsumedError)) throw error;
    resetAttnSpecGuard(sdpa);
    console.log(`guard: the Qwen2 model configured "sdpa" raised ${error.name} at the step boundary`);
  }
  return true;
}

if (import.meta.main) {
  if (!(await runQwen2Demo(Deno.args.length > 0 ? ["--qwen2", ...Deno.args] : []))) Deno.exit(1);
}
