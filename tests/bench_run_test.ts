/**
 * The benchmark run as a whole, without a GPU: `main` in `--dry-run` (table, JSON and SVG files, with and
 * without the peers script in `--fake` mode) and `peers.py`'s masks and inputs checked against ours under
 * a numpy stand-in for torch.
 */

import assert from "node:assert/strict";
import { compileFlexKey } from "../lib/masks/flex_key.ts";
import type { FlexKey } from "../lib/core/types.ts";
import {
  countFlops,
  describeMask,
  MASK_LABELS,
  type MaskDescription,
  peerCaseJson,
  specOfMask,
} from "../scripts/bench/cases.ts";
import { hashBf16, INPUT_RECIPES, randnBf16 } from "../scripts/bench/inputs.ts";
import { main } from "../scripts/bench/main.ts";
import { type BenchReport, magiEnvironment } from "../scripts/bench/report.ts";
import { SMALL_MASK_PARAMS } from "./support/fixtures.ts";
import { coverCounts, slicesOfKey } from "./support/mask_check.ts";
import { parseXml } from "./support/xml.ts";

/** The FFA cell rule (docs/semantics.md), cell by cell from a key's slices: independent of lib's dense mask. */
function keyVisibility(key: FlexKey): Uint8Array {
  return coverCounts(slicesOfKey(key), key.totalQ, key.totalK);
}

/** Runs `main` with console output captured. */
async function runMain(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [], err: string[] = [];
  const { log, error } = console;
  console.log = (...items: unknown[]) => out.push(items.join(" "));
  console.error = (...items: unknown[]) => err.push(items.join(" "));
  try {
    const code = await main(argv);
    return { code, stdout: out.join("\n"), stderr: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

async function hasPython(): Promise<boolean> {
  try {
    return (await new Deno.Command(Deno.env.get("PYTHON") ?? "python3", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    })
      .output()).success;
  } catch {
    return false;
  }
}

/**
 * Runs scripts/bench/peers.py's mask_mods and input hash under a minimal numpy stand-in for torch (the ops they
 * use: arange, indexing, comparisons, bit ops, where, repeat_interleave), printing JSON: the dense mask of
 * each case as a 0/1 string, and the first elements of each input stream as int16 bit patterns.
 */
const PEERS_UNDER_NUMPY = `
import json, sys, types
import numpy as np
BF16 = object()
class T(np.ndarray):
    def to(self, target):
        if isinstance(target, str) or target is BF16:
            return self
        return np.asarray(self).astype(target).view(T)
    def view(self, *args):
        if len(args) == 1 and args[0] is BF16:
            return self
        if len(args) == 1 and isinstance(args[0], type):
            return np.ndarray.view(self, args[0])
        return np.ndarray.reshape(self, args).view(T)
    def numel(self):
        return self.size
wrap = lambda a: np.asarray(a).view(T)
torch = types.ModuleType("torch")
torch.int64, torch.int32, torch.int16, torch.bool, torch.bfloat16 = np.int64, np.int32, np.int16, np.bool_, BF16
torch.float64, torch.float32 = np.float64, np.float32
for name in ("sqrt", "log", "cos", "sin"):
    setattr(torch, name, (lambda f: lambda x: wrap(f(np.asarray(x))))(getattr(np, name)))
torch.stack = lambda tensors, dim=0: wrap(np.stack([np.asarray(x) for x in tensors], axis=dim))
torch.arange = lambda *a, device=None, dtype=None: wrap(np.arange(*a, dtype=dtype))
torch.zeros = lambda *shape, dtype=None, device=None: wrap(np.zeros(shape if shape and not isinstance(shape[0], tuple) else shape[0], dtype=dtype))
torch.tensor = lambda data, dtype=None: wrap(np.array(data, dtype=dtype))
torch.repeat_interleave = lambda values, repeats: wrap(np.repeat(np.asarray(values), np.asarray(repeats)))
torch.where = lambda c, a, b: wrap(np.where(c, a, b))
nn = types.ModuleType("torch.nn"); functional = types.ModuleType("torch.nn.functional")
torch.nn, nn.functional = nn, functional
sys.modules.update({"torch": torch, "torch.nn": nn, "torch.nn.functional": functional})
sys.path.insert(0, sys.argv[1])
sys.dont_write_bytecode = True  # leave no __pycache__ in the repository
import peers
assert peers.torch is torch
spec = json.load(open(sys.argv[2]))
result = {"masks": {}, "areas": {}, "hashes": {}, "randn": {}}
for case in spec["cases"]:
    total = case["S"]
    mod = peers.build_mask_mod(case, "cpu")
    q_idx = np.arange(total, dtype=np.int32)[:, None].view(T)
    kv_idx = np.arange(total, dtype=np.int32)[None, :].view(T)
    zero = np.zeros((), dtype=np.int32).view(T)
    dense = np.ones((total, total), dtype=bool) if mod is None else np.broadcast_to(np.asarray(mod(zero, zero, q_idx, kv_idx)), (total, total))
    result["masks"][case["name"]] = "".join("1" if cell else "0" for cell in dense.reshape(-1))
    result["areas"][case["name"]] = peers.mask_area(mod, total, "cpu", rows_per_chunk=7)
for role, recipe in spec["inputs"].items():
    bits = peers.hash_bf16(3000, recipe["seed"], recipe["exp_lo"], recipe["exp_hi"], "cpu")
    result["hashes"][role] = [int(value) for value in np.asarray(bits)]
    result["randn"][role] = [int(value) for value in np.asarray(peers.randn_bf16(3001, recipe["seed"], "cpu"))]
print(json.dumps(result))
`;

async function hasNumpy(): Promise<boolean> {
  try {
    const python = Deno.env.get("PYTHON") ?? "python3";
    return (await new Deno.Command(python, { args: ["-c", "import numpy"], stdout: "null", stderr: "null" })
      .output())
      .success;
  } catch {
    return false;
  }
}

Deno.test({
  name: "peers.py builds the same masks and inputs as ours (run under a numpy stand-in for torch)",
  ignore: !(await hasNumpy()),
  fn: async () => {
    const masks: MaskDescription[] = [
      ...MASK_LABELS.map((label) => describeMask(label, 64, SMALL_MASK_PARAMS)),
      { kind: "varlen", seqlens: [5, 11, 1, 23], causal: false },
      { kind: "sliding_window", seqlens: [17, 23], left: 2, right: 3 },
      { kind: "sliding_window", seqlens: [40], left: -1, right: 4 },
      { kind: "sliding_window", seqlens: [40], left: 6, right: -1 },
      { kind: "prefix_tree", nodeLengths: [6, 3, 5, 4, 2], paths: [[0, 1, 3], [0, 1, 4], [0, 2]] },
    ];
    const cases = masks.map((mask, index) => {
      const seqlen = mask.kind === "varlen" || mask.kind === "sliding_window"
        ? mask.seqlens.reduce((a, b) => a + b, 0)
        : mask.kind === "prefix_tree"
        ? mask.nodeLengths.reduce((a, b) => a + b, 0)
        : 64;
      const benchCase = {
        name: `m${index}-${mask.kind}`,
        group: "main" as const,
        maskLabel: "full" as const,
        seqlen,
        headsQ: 2,
        headsKv: 1,
        headDim: 8,
        dtype: "bfloat16" as const,
        mask,
      };
      const key = compileFlexKey(specOfMask(mask, seqlen));
      return { json: peerCaseJson(benchCase, key, countFlops(key, 2, 8)), key };
    });
    const inputs = Object.fromEntries(
      Object.entries(INPUT_RECIPES).map(([role, recipe]) => [role, {
        seed: recipe.seed,
        exp_lo: recipe.expLo,
        exp_hi: recipe.expHi,
      }]),
    );
    const dir = await Deno.makeTempDir({ prefix: "bench-peers-numpy-" });
    try {
      await Deno.writeTextFile(`${dir}/harness.py`, PEERS_UNDER_NUMPY);
      await Deno.writeTextFile(
        `${dir}/cases.json`,
        JSON.stringify({ inputs, cases: cases.map((item) => item.json) }),
      );
      const benchDir = decodeURIComponent(new URL("../scripts/bench/", import.meta.url).pathname);
      const run = await new Deno.Command(Deno.env.get("PYTHON") ?? "python3", {
        args: [`${dir}/harness.py`, benchDir, `${dir}/cases.json`],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(run.success, new TextDecoder().decode(run.stderr));
      const result = JSON.parse(new TextDecoder().decode(run.stdout)) as {
        masks: Record<string, string>;
        areas: Record<string, number>;
        hashes: Record<string, number[]>;
        randn: Record<string, number[]>;
      };
      for (const { json, key } of cases) {
        const ours = keyVisibility(key);
        const theirs = result.masks[json.name];
        assert.equal(theirs.length, ours.length, json.name);
        for (let cell = 0; cell < ours.length; cell++) {
          assert.equal(Number(theirs[cell]), ours[cell], `${json.name} cell ${cell}`);
        }
        assert.equal(result.areas[json.name], json.area, `${json.name} area`);
      }
      for (const [role, recipe] of Object.entries(INPUT_RECIPES)) {
        const ours = Int16Array.from(hashBf16(3000, recipe.seed, recipe.expLo, recipe.expHi));
        assert.deepEqual(result.hashes[role], [...ours], `hash ${role}`);
        const normal = Int16Array.from(randnBf16(3001, recipe.seed));
        assert.deepEqual(result.randn[role], [...normal], `randn ${role}`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("dry run end to end: table, JSON and SVG files", async (t) => {
  const outDir = await Deno.makeTempDir({ prefix: "bench-test-" });
  try {
    await t.step("without peers", async () => {
      const { code, stdout, stderr } = await runMain([
        "--dry-run",
        "--skip-peers",
        "--cases",
        "causal-4k,varlen-4k",
        "--out-dir",
        outDir,
      ]);
      assert.equal(code, 0, stderr);
      assert.match(stderr, /ours 2\/2 varlen-4k/);
      assert.match(stdout, /DRY RUN/);
      const json = [...Deno.readDirSync(outDir)].find((entry) => entry.name.endsWith(".json"))!.name;
      const report = JSON.parse(Deno.readTextFileSync(`${outDir}/${json}`)) as BenchReport;
      assert.deepEqual(report.cases.map((item) => item.name), ["causal-4k", "varlen-4k"]);
      assert.equal(report.cases[0].area, (4096 * 4097) / 2);
      assert.ok(
        report.cases.every((item) => item.ours.tflopsFwd! > 0 && item.ours.check?.out.nonFinite === 0),
      );
      assert.ok(report.hostOverhead && report.hostOverhead.publicApi.issueUs > 0);
      assert.deepEqual(
        report.kernelSettings,
        magiEnvironment(),
        "the run's MAGI_FFA_* variables are recorded",
      );
      assert.match(stderr, /kernel settings: /);
      assert.equal(report.inputs, "randn", "the input distribution is recorded");
      const svg = Deno.readTextFileSync(`${outDir}/${json.replace(/\.json$/, ".svg")}`);
      assert.equal(parseXml(svg).root, "svg");
    });
    if (await hasPython()) {
      await t.step("with the peers script in --fake mode", async () => {
        const peersDir = `${outDir}/peers`;
        const { code, stdout, stderr } = await runMain([
          "--dry-run",
          "--cases",
          "causal-4k",
          "--out-dir",
          peersDir,
        ]);
        assert.equal(code, 0, stderr);
        const json = [...Deno.readDirSync(peersDir)].find((entry) => entry.name.endsWith(".json"))!.name;
        const report = JSON.parse(Deno.readTextFileSync(`${peersDir}/${json}`)) as BenchReport;
        const [item] = report.cases;
        assert.ok((item.peers.flash.tflops_fwd ?? 0) > 0 && (item.peers.flex.tflops_bwd ?? 0) > 0);
        assert.match(item.peers.cudnn.error ?? "", /fake failure/);
        assert.match(stdout, /causal-4k cuDNN: FAILED/);
        assert.equal(report.torch?.fake, true);
      });
    }
  } finally {
    await Deno.remove(outDir, { recursive: true });
  }
});
