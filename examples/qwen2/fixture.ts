/**
 * The transformers fixture: a small Qwen2 checkpoint and transformers' float32 logits for a prefix tree of
 * rollouts and for packed documents, written by `examples/qwen2/make_fixture.py` into one folder
 * (`config.json`, `model.safetensors`, `expected.safetensors`). The expected file's `__metadata__.fixture`
 * is JSON describing the inputs; its tensors `logits/<kind>/<i>` are the logits of each sample run alone.
 * @module
 */

import { z } from "zod";
import { CheckpointError } from "./errors.ts";
import { readSafetensors } from "./safetensors.ts";

/** The committed fixture folder. */
export const QWEN2_FIXTURE_DIR: string = new URL("../../tests/fixtures/qwen2-tiny", import.meta.url).pathname;

/** How to make the fixture (printed when it is missing). */
export const QWEN2_FIXTURE_HOWTO: string =
  "generate it on a machine with PyTorch and transformers: `python3 examples/qwen2/make_fixture.py " +
  "tests/fixtures/qwen2-tiny` (no network needed), then commit the folder";

/** The format tag `make_fixture.py` writes. */
export const QWEN2_FIXTURE_FORMAT = "magi-attn/qwen2-fixture/1";

/** The inputs and provenance `make_fixture.py` records in `__metadata__.fixture` (snake_case, as written). */
export interface Qwen2FixtureInputs {
  /** {@linkcode QWEN2_FIXTURE_FORMAT}. */
  format: typeof QWEN2_FIXTURE_FORMAT;
  /** Seed of the weights and the token ids. */
  seed: number;
  /** Versions of Python, torch, transformers, safetensors that made it. */
  versions: Record<string, string>;
  /** How transformers ran: attention implementation, dtype, device. */
  reference: { attn_implementation: string; dtype: string; device: string };
  /** The prefix tree: tokens of each node, the root-to-leaf paths, the packed positions the script computed. */
  prefix_tree: { node_tokens: number[][]; sample_paths: number[][]; packed_position_ids: number[] };
  /** The documents packed back to back. */
  documents: { tokens: number[][] };
  /** Every sample transformers ran alone, and the name of its logits tensor. */
  samples: {
    name: string;
    kind: "tree" | "document";
    index: number;
    input_ids: number[];
    position_ids: number[];
    logits: string;
    max_abs_logit: number;
  }[];
}

const tokenList = z.array(z.number().int().nonnegative());

const fixtureSchema: z.ZodType<Qwen2FixtureInputs> = z.object({
  format: z.literal(QWEN2_FIXTURE_FORMAT),
  seed: z.number().int(),
  versions: z.record(z.string(), z.string()),
  reference: z.object({ attn_implementation: z.string(), dtype: z.string(), device: z.string() }),
  prefix_tree: z.object({
    node_tokens: z.array(tokenList).min(1),
    sample_paths: z.array(z.array(z.number().int().nonnegative()).min(1)).min(1),
    packed_position_ids: tokenList,
  }),
  documents: z.object({ tokens: z.array(tokenList.min(1)).min(1) }),
  samples: z.array(z.object({
    name: z.string(),
    kind: z.enum(["tree", "document"]),
    index: z.number().int().nonnegative(),
    input_ids: tokenList.min(1),
    position_ids: tokenList.min(1),
    logits: z.string(),
    max_abs_logit: z.number(),
  })).min(1),
});

/** One sample run alone by transformers. */
export interface Qwen2FixtureSample {
  /** `"tree/0"`, `"document/2"`, … */
  readonly name: string;
  /** A prefix-tree sample (a root-to-leaf path) or a packed document. */
  readonly kind: "tree" | "document";
  /** Index among the samples of its kind. */
  readonly index: number;
  /** Its tokens (the path's nodes concatenated, or the document). */
  readonly inputIds: number[];
  /** The positions transformers ran it at (0, 1, 2, …). */
  readonly positionIds: number[];
  /** transformers' logits `[inputIds.length, vocab]`, row-major. */
  readonly logits: Float32Array;
}

/** The fixture: where the checkpoint is, the inputs, and transformers' logits per sample. */
export interface Qwen2Fixture {
  /** The checkpoint folder (load it with `Qwen2ForCausalLM.fromPretrained`). */
  readonly dir: string;
  /** The inputs and provenance recorded by the script. */
  readonly inputs: Qwen2FixtureInputs;
  /** Every sample, trees first. */
  readonly samples: readonly Qwen2FixtureSample[];
  /** The vocabulary size (columns of every logits tensor). */
  readonly vocabSize: number;
}

/** Whether the fixture folder (its expected file) exists. */
export function qwen2FixtureExists(dir: string = QWEN2_FIXTURE_DIR): boolean {
  try {
    return Deno.statSync(`${dir}/expected.safetensors`).isFile;
  } catch {
    return false;
  }
}

/**
 * Reads `DIR/expected.safetensors` and checks it: the metadata parses, each sample's tokens are what the
 * tree or document list gives, and each logits tensor is `[tokens, vocab]`. A missing fixture is a
 * {@linkcode CheckpointError} that says how to generate it.
 */
export async function readQwen2Fixture(dir: string = QWEN2_FIXTURE_DIR): Promise<Qwen2Fixture> {
  const file = `${dir}/expected.safetensors`;
  if (!qwen2FixtureExists(dir)) {
    throw new CheckpointError({ file }, "does not exist", QWEN2_FIXTURE_HOWTO);
  }
  const expected = await readSafetensors(file);
  const regenerate = "regenerate the fixture with examples/qwen2/make_fixture.py";
  let json: unknown;
  try {
    json = JSON.parse(expected.metadata.fixture ?? "");
  } catch (error) {
    throw new CheckpointError({ file, field: "__metadata__.fixture" }, `is not JSON (${error})`, regenerate);
  }
  const parsed = fixtureSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new CheckpointError(
      { file, field: ["__metadata__.fixture", ...issue.path.map(String)].join(".") },
      `is invalid: ${issue.message}`,
      regenerate,
    );
  }
  const inputs = parsed.data;
  const { node_tokens: nodeTokens, sample_paths: samplePaths } = inputs.prefix_tree;
  let vocabSize = -1;
  const samples = inputs.samples.map((sample, sampleIndex): Qwen2FixtureSample => {
    const field = `__metadata__.fixture.samples.${sampleIndex}`;
    const fail = (problem: string): never => {
      throw new CheckpointError({ file, field }, problem, regenerate);
    };
    const wanted = sample.kind === "tree"
      ? samplePaths[sample.index]?.flatMap((node) => nodeTokens[node] ?? [-1])
      : inputs.documents.tokens[sample.index];
    if (!wanted || wanted.join() !== sample.input_ids.join()) {
      fail(`(${sample.name}) has input_ids that are not ${sample.kind} ${sample.index} of the inputs`);
    }
    if (sample.position_ids.length !== sample.input_ids.length) {
      fail(
        `(${sample.name}) has ${sample.position_ids.length} position ids for ${sample.input_ids.length} tokens`,
      );
    }
    const logits = expected.tensors.get(sample.logits);
    if (!logits) fail(`names logits tensor ${JSON.stringify(sample.logits)}, which the file does not hold`);
    const [rows, columns] = logits!.shape;
    if (
      logits!.shape.length !== 2 || rows !== sample.input_ids.length ||
      (vocabSize >= 0 && columns !== vocabSize)
    ) {
      throw new CheckpointError(
        { file, tensor: sample.logits },
        `has shape [${logits!.shape.join(", ")}] for ${sample.input_ids.length} tokens`,
        regenerate,
      );
    }
    vocabSize = columns;
    return {
      name: sample.name,
      kind: sample.kind,
      index: sample.index,
      inputIds: sample.input_ids,
      positionIds: sample.position_ids,
      logits: logits!.data,
    };
  });
  return { dir, inputs, samples, vocabSize };
}
