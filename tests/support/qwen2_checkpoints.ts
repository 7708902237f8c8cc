/**
 * The synthetic Qwen2 checkpoints the Qwen2 tests load (untied, tied and sharded, written once per process
 * into a scratch folder removed at unload), edited copies of them, and deterministic token ids.
 * @module
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../../lib/core/errors.ts";
import { CheckpointError } from "../../examples/qwen2/errors.ts";
import {
  SYNTHETIC_QWEN2_CONFIG,
  syntheticQwen2Tensors,
  writeSyntheticQwen2Checkpoint,
} from "../../examples/qwen2/synthetic.ts";
import { encodeSafetensors } from "../../examples/qwen2/safetensors.ts";

/** The float32 bound of the issue: max |ours − reference| ≤ 1e-4 · max |reference|, per sample. */
export const FLOAT32_RELATIVE = 1e-4;

/** The synthetic model's vocabulary size. */
export const VOCAB: number = SYNTHETIC_QWEN2_CONFIG.vocabSize;

/** Deterministic token ids in [0, VOCAB). */
export function tokens(length: number, seed: number): number[] {
  return Array.from({ length }, (_, index) => (index * 7919 + seed * 104729 + 13) % VOCAB);
}

/** The scratch folder of the checkpoints (removed at unload). */
export const scratch: string = await Deno.makeTempDir({ prefix: "magi-qwen2-" });
/** The untied checkpoint (seed 3). */
export const untiedDir = `${scratch}/untied`;
/** The same weights with tied word embeddings. */
export const tiedDir = `${scratch}/tied`;
/** The untied checkpoint in three shards. */
export const shardedDir = `${scratch}/sharded`;
await writeSyntheticQwen2Checkpoint(untiedDir, { seed: 3 });
await writeSyntheticQwen2Checkpoint(tiedDir, { seed: 3, config: { tieWordEmbeddings: true } });
await writeSyntheticQwen2Checkpoint(shardedDir, { seed: 3, shards: 3 });

/** A copy of the untied checkpoint, changed by `edit`, in a fresh folder. */
export async function editedCheckpoint(
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
export function rewriteWeights(
  change: (tensors: ReturnType<typeof syntheticQwen2Tensors>) => typeof tensors,
): (dir: string) => Promise<void> {
  return async (dir: string): Promise<void> => {
    const tensors = syntheticQwen2Tensors(SYNTHETIC_QWEN2_CONFIG, 3);
    await Deno.writeFile(`${dir}/model.safetensors`, encodeSafetensors(change(tensors)));
  };
}

/** Expects `run` to throw a CheckpointError whose message names every string of `mentions`. */
export async function assertCheckpointError(
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

globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(scratch, { recursive: true });
  } catch {
    // already gone
  }
});
