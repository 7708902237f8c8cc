/**
 * Drives `scripts/bench/peers.py` (PyTorch cuDNN SDPA, flash SDPA and FlexAttention on the same cases and
 * inputs) and reads what it writes.
 * @module
 */

import type { PeerCaseJson } from "./cases.ts";
import { INPUT_RECIPES, type InputDistribution } from "./inputs.ts";
import { errorText, progress } from "./progress.ts";
import type { BenchReport, PeerResult } from "./report.ts";

/** What `scripts/bench/peers.py` writes (the parts this script reads). */
export interface PeersOutput {
  torch_version?: string | null;
  cuda_version?: string | null;
  cudnn_version?: number | null;
  triton_version?: string | null;
  gpu_name?: string;
  ceilings?: Record<string, unknown>;
  error?: string;
  fake?: boolean;
  cases?: Record<
    string,
    { peers?: Record<string, PeerResult>; checks?: Record<string, number | null>; error?: string }
  >;
}

/**
 * Runs `python3 scripts/bench/peers.py cases.json out.json` (unbuffered, its progress on our stderr) and reads
 * out.json, also after a failure (the script rewrites it after every case). `--fake` makes the script
 * simulate numbers without torch (for `--dry-run`).
 */
export async function runPeers(
  casesPath: string,
  outPath: string,
  peers: readonly string[],
  fake: boolean,
): Promise<{ output?: PeersOutput; error?: string }> {
  const python = Deno.env.get("PYTHON") ?? "python3";
  const script = fromFileUrl(new URL("./peers.py", import.meta.url));
  const args = [script, casesPath, outPath, "--peers", peers.join(",")];
  if (fake) args.push("--fake");
  progress(`peers: ${python} ${args.join(" ")}`);
  let failure: string | undefined;
  try {
    const child = new Deno.Command(python, {
      args,
      env: { PYTHONUNBUFFERED: "1" },
      stdin: "null",
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    const status = await child.status;
    if (!status.success) {
      failure = `scripts/bench/peers.py exited with code ${status.code}${
        status.signal ? ` (${status.signal})` : ""
      }`;
    }
  } catch (error) {
    failure = error instanceof Deno.errors.NotFound
      ? `${python} not found (set PYTHON to the interpreter that has torch)`
      : `could not start ${python}: ${errorText(error)}`;
  }
  let output: PeersOutput | undefined;
  try {
    output = JSON.parse(await Deno.readTextFile(outPath)) as PeersOutput;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) {
      failure = `${failure ?? ""} unreadable ${outPath}: ${errorText(error)}`;
    }
  }
  if (output?.error) failure = failure ? `${failure}: ${output.error}` : output.error;
  return { output, error: failure };
}

/** The file path of a `file:` URL. */
export function fromFileUrl(url: URL): string {
  return decodeURIComponent(url.pathname);
}

/**
 * Writes the peers' `cases.json`: the cases (with our sampled output rows) and how to rebuild our inputs
 * (`distribution`, and per role its seed and, for `hashed`, its exponent range).
 */
export async function writePeerCases(
  path: string,
  cases: readonly PeerCaseJson[],
  distribution: InputDistribution,
): Promise<void> {
  const inputs = Object.fromEntries(
    Object.entries(INPUT_RECIPES).map(([role, recipe]) => [
      role,
      { seed: recipe.seed, exp_lo: recipe.expLo, exp_hi: recipe.expHi },
    ]),
  );
  await Deno.writeTextFile(path, JSON.stringify({ schema: 1, layout: "thd", distribution, inputs, cases }));
}

/** Copies the peers' versions, ceilings and per-case results into `report`. */
export function mergePeersOutput(report: BenchReport, output: PeersOutput): void {
  report.torch = {
    torch_version: output.torch_version ?? null,
    cuda_version: output.cuda_version ?? null,
    cudnn_version: output.cudnn_version ?? null,
    triton_version: output.triton_version ?? null,
    gpu_name: output.gpu_name ?? null,
    fake: output.fake ?? false,
  };
  report.ceilings = output.ceilings ?? null;
  for (const item of report.cases) {
    const entry = output.cases?.[item.name];
    if (!entry) continue;
    item.peers = entry.peers ?? {};
    item.checks = entry.checks ?? {};
    if (entry.error) item.peersError = entry.error;
  }
}
