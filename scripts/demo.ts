/**
 * The main job, end to end: an RL-rollout prefix tree (one prompt, three completions) packed into one
 * sequence and run through a tiny transformer with magi attention; each completion's logits must equal
 * running prompt + that completion alone. Then the consumption guard catches a model that silently uses
 * another attention implementation.
 *
 * Then the same on a real architecture, where a checkpoint is at hand: the Qwen2 decoder of examples/qwen2
 * on an HF checkpoint folder, against transformers' logits when the folder is the fixture.
 *
 * Run: `deno task demo` (or `deno task demo --qwen2 DIR`)
 * @module
 */

import {
  AttnMaskSpec,
  AttnSpecNotConsumedError,
  backendInfo,
  closeAttnSpecStep,
  maskToSvg,
  prefixTreeLayout,
  resetAttnSpecGuard,
  setAttnSpecOnAttention,
} from "../mod.ts";
import { seededRandom } from "../testing.ts";
import { DEFAULT_TINY_CONFIG, TinyForCausalLM } from "../tests/support/tiny_model.ts";
import { backendNotice } from "../tests/support/backend_notice.ts";
import { runQwen2Demo } from "../examples/qwen2/demo.ts";

const PROMPT_LENGTH = 40;
const COMPLETION_LENGTHS = [24, 9, 31];

const info = backendInfo();
const onGpu = info.backend === "cuda";
// The GPU kernel takes bf16/fp16, so on a GPU the attention inputs are bf16 and the bound is bf16's.
const attentionDtype = onGpu ? "bfloat16" : "float32";
const tolerance = onGpu ? 2e-2 : 1e-4;
console.log(backendNotice(`backend: ${info.backend} — `, info));
console.log(`attention dtype: ${attentionDtype}, tolerance on max |logit diff|: ${tolerance}`);

const next = seededRandom(7);
const config = { ...DEFAULT_TINY_CONFIG, attentionDtype } as const;
const randomTokens = (length: number) => Array.from({ length }, () => Math.floor(next() * config.vocabSize));
const prompt = randomTokens(PROMPT_LENGTH);
const completions = COMPLETION_LENGTHS.map(randomTokens);

// The prefix tree: node 0 is the prompt, nodes 1..3 the completions; each sample is prompt → completion.
const nodeLengths = [PROMPT_LENGTH, ...COMPLETION_LENGTHS];
const samplePaths = COMPLETION_LENGTHS.map((_, index) => [0, index + 1]);
const spec = AttnMaskSpec.prefixTree(nodeLengths, samplePaths);
const layout = prefixTreeLayout(nodeLengths, samplePaths);
const packedTokens = [prompt, ...completions].flat();

const picturePath = new URL("../bench/demo-prefix-tree.svg", import.meta.url);
await Deno.writeTextFile(
  picturePath,
  maskToSvg(spec, {
    title: `prefix tree: prompt ${PROMPT_LENGTH}, completions ${COMPLETION_LENGTHS.join(", ")}`,
  }),
);
console.log(`mask picture: ${picturePath.pathname}`);

const model = new TinyForCausalLM({ ...config, attnImplementation: "magi" });
const stamped = setAttnSpecOnAttention(model, spec);
const packedLogits = await model.forward(packedTokens, layout.positionIds);
closeAttnSpecStep(model);
console.log(
  `packed ${packedTokens.length} tokens (prompt ${PROMPT_LENGTH}, completions ${
    COMPLETION_LENGTHS.join(", ")
  }) ` +
    `as ${spec.qRanges.length} slices; spec stamped on ${stamped} attention modules and consumed`,
);

// The reference: the same weights (same seed) with plain dense attention on each sample alone.
const referenceModel = new TinyForCausalLM({ ...config, attnImplementation: "sdpa" });
// What a model that ignored the spec computes: plain causal attention over the packed sequence.
const fallbackModel = new TinyForCausalLM({ ...config, attnImplementation: "sdpa" });
setAttnSpecOnAttention(fallbackModel, spec);
const fallbackLogits = await fallbackModel.forward(packedTokens, layout.positionIds);

const vocab = config.vocabSize;
function maxAbsDiff(alone: Float32Array, packed: Float32Array, packedRows: number[]): number {
  let worst = 0;
  for (const [aloneRow, packedRow] of packedRows.entries()) {
    for (let token = 0; token < vocab; token++) {
      const diff = Math.abs(alone[aloneRow * vocab + token] - packed[packedRow * vocab + token]);
      if (!(diff <= worst)) worst = Number.isNaN(diff) ? Infinity : diff;
    }
  }
  return worst;
}
const rows: { sample: number; tokens: number; magi: number; plainCausal: number }[] = [];
for (const [sample, completion] of completions.entries()) {
  // Prompt + this completion alone, causal, positions 0..n-1.
  const aloneLogits = await referenceModel.forward([...prompt, ...completion]);
  const packedRows = layout.sampleTokenRanges[sample].flatMap(([start, end]) =>
    Array.from({ length: end - start }, (_, offset) => start + offset)
  );
  rows.push({
    sample,
    tokens: packedRows.length,
    magi: maxAbsDiff(aloneLogits, packedLogits, packedRows),
    plainCausal: maxAbsDiff(aloneLogits, fallbackLogits, packedRows),
  });
}

console.log("\nmax |logit packed − logit of the sample run alone|");
console.log(" sample | tokens | magi (prefix-tree spec) | plain causal packing (wrong mask)");
console.log("--------+--------+-------------------------+----------------------------------");
for (const row of rows) {
  console.log(
    ` ${String(row.sample).padStart(6)} | ${String(row.tokens).padStart(6)} | ` +
      `${row.magi.toExponential(3).padStart(23)} | ${row.plainCausal.toExponential(3)}`,
  );
}
const worst = Math.max(...rows.map((row) => row.magi));
if (!(worst <= tolerance)) {
  console.error(`\nFAIL: packed logits differ from the separate runs by ${worst} (> ${tolerance})`);
  Deno.exit(1);
}
console.log(
  `\nOK: every completion's logits match its separate run (worst ${worst.toExponential(3)} ≤ ${tolerance})`,
);

// The guard: the "sdpa" model above had the spec stamped and ignored it; its next step says so.
try {
  setAttnSpecOnAttention(fallbackModel, spec);
  console.error("FAIL: the guard did not fire for a model that ignored its spec");
  Deno.exit(1);
} catch (error) {
  if (!(error instanceof AttnSpecNotConsumedError)) throw error;
  console.log(`\nguard: a model with attnImplementation "sdpa" raised ${error.name} at the next step:`);
  console.log(`  ${error.message}`);
  resetAttnSpecGuard(fallbackModel);
}

// A real architecture: `--qwen2 DIR`, or the committed transformers fixture when it is there.
if (!(await runQwen2Demo(Deno.args))) Deno.exit(1);
