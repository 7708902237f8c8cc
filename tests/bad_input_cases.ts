/**
 * The bad-input table: one row per class of bad input across the public API (specs, keys, tensors,
 * dtypes, shapes, GQA ratios, options, backends, device tensors, the library loader, permissions, the
 * registry, the magi forward and the stamping guard). Each row says which error must come out (class,
 * field, words of the message) and the runner checks that the call left every input and the compiled-key
 * cache unchanged. Used by tests/bad_input_test.ts and scripts/reliability.ts.
 *
 * Device-tensor and library rows run without a GPU against a fake `libmagi_ffa.so` compiled with gcc
 * (host memory stands in for device memory); they are skipped where gcc is missing. Permission rows run a
 * fresh `deno run` without the permission.
 * @module
 */

import { MAGI_FFA_ABI_VERSION } from "../ffi/ffi.ts";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { compileFlexKey, denseMask, flexKeyCacheSize, sliceArea, toFlexKey } from "../lib/masks/flex_key.ts";
import { backendInfo, flexFlashAttnBackward, flexFlashAttnForward } from "../lib/backends/ffa.ts";
import { magiAttentionForward, makeMagiAttnFunc } from "../lib/attention/magi.ts";
import {
  ALL_ATTENTION_FUNCTIONS,
  AttentionInterface,
  sdpaAttentionForward,
} from "../lib/attention/registry.ts";
import { AttnMaskSpec, isAttnMaskSpec, specSliceArrays } from "../lib/masks/spec.ts";
import { closeAttnSpecStep, resetAttnSpecGuard, setAttnSpecOnAttention } from "../lib/attention/stamping.ts";
import { maskToSvg } from "../lib/masks/svg.ts";
import { type DType, type HostTensor, randomTensor, tensor } from "../lib/core/tensor.ts";
import type { FlexKey } from "../lib/core/types.ts";
import { DeviceTensor, emptyDevice, toDevice, toHost } from "../ffi/device.ts";
import { probeCudaBackend } from "../ffi/library.ts";
import { fakes, gccAvailable, REPO_ROOT } from "./support/fake_library.ts";

/** Where the rows that need files find them. */
export interface BadInputEnv {
  /** Temporary directory (fake libraries, scripts); removed by {@linkcode disposeBadInputEnv}. */
  readonly dir: string;
  /** A fake library with the right ABI (absent without gcc). */
  readonly fakeLibrary?: string;
  /** A fake library reporting ABI version 999 (absent without gcc). */
  readonly wrongAbiLibrary?: string;
  /** A fake library that loads but finds no driver, as on a machine without a GPU (absent without gcc). */
  readonly noDriverLibrary?: string;
  /** `lib/core` and `lib/masks` copied elsewhere: a second copy of the module, as a second import gives. */
  readonly secondCopySpecModule: string;
  /** A text file named like a library. */
  readonly notALibrary: string;
  /** Why gcc rows are skipped, when they are. */
  readonly gccMissing?: string;
  /** Sentinel specs compiled before every row: their cached keys must survive each row unchanged. */
  readonly sentinels: readonly AttnMaskSpec[];
}

/** What a row's setup returns: the inputs to watch and the call that must fail. */
export interface CaseRun {
  /** Everything the call receives (deep-compared before and after). */
  readonly inputs: unknown;
  /** The failing call. */
  readonly call: () => unknown;
  /** Set by calls that run elsewhere (a subprocess) and compare their own inputs there. */
  remoteInputsUnchanged?: boolean;
  /** Undoes state the setup armed (e.g. a stamping guard). */
  readonly cleanup?: () => void;
}

/** One row of the table. */
export interface BadInputCase {
  /** Stable identifier, `<area>.<what>`. */
  readonly id: string;
  /** API area. */
  readonly area: string;
  /** What is wrong, in words. */
  readonly title: string;
  /** `name` of the error that must be thrown (e.g. `"MagiAttnInputError"`, `"NotCapable"`). */
  readonly errorClass: string;
  /** `field` a MagiAttnInputError must name. */
  readonly field?: string;
  /** Words the message must contain (the fix, the value, ...). */
  readonly message?: RegExp;
  /** Needs the gcc-built fake library. */
  readonly needsGcc?: boolean;
  /** Needs a machine whose CUDA backend is unavailable (the row checks the "no GPU" error). */
  readonly needsNoGpu?: boolean;
  /**
   * A known defect in code this table does not own: the row states the correct behaviour and is expected
   * to fail until the defect is fixed (the test registers it as ignored; the report marks it).
   */
  readonly bug?: string;
  /** Builds the inputs and the call. */
  readonly setup: (env: BadInputEnv) => CaseRun | Promise<CaseRun>;
}

/** Outcome of one row. */
export interface BadInputResult {
  /** Row identifier. */
  readonly id: string;
  /** API area. */
  readonly area: string;
  /** What is wrong. */
  readonly title: string;
  /** Expected error class. */
  readonly expectedClass: string;
  /** Class of the error thrown (`"none"` when nothing was thrown). */
  readonly errorClass?: string;
  /** `field` of the error, when it has one. */
  readonly field?: string;
  /** The error message. */
  readonly message?: string;
  /** Whether every expectation held. */
  readonly passed: boolean;
  /** The expectations that failed. */
  readonly problems: readonly string[];
  /** Inputs deep-equal before and after the call. */
  readonly inputsUnchanged?: boolean;
  /** Cache size and cached sentinel keys unchanged. */
  readonly cacheUnchanged?: boolean;
  /** Why the row did not run. */
  readonly skipped?: string;
  /** The known defect this row documents, if any. */
  readonly bug?: string;
}

/**
 * Creates the temporary directory and the sentinel specs; the fake libraries are the shared ones of
 * `tests/support/fake_library.ts` (built there once per process when gcc is here). Needs --allow-write,
 * --allow-read and --allow-run.
 */
export function prepareBadInputEnv(): BadInputEnv {
  const dir = Deno.makeTempDirSync({ prefix: "magi_bad_input_" });
  const notALibrary = `${dir}/not_a_library/libmagi_ffa.so`;
  Deno.mkdirSync(`${dir}/not_a_library`);
  Deno.writeTextFileSync(notALibrary, "this is a text file, not a shared library\n");
  for (const folder of ["core", "masks"]) {
    Deno.mkdirSync(`${dir}/copy/lib/${folder}`, { recursive: true });
    for (const entry of Deno.readDirSync(`${REPO_ROOT}lib/${folder}`)) {
      Deno.copyFileSync(`${REPO_ROOT}lib/${folder}/${entry.name}`, `${dir}/copy/lib/${folder}/${entry.name}`);
    }
  }
  return {
    dir,
    fakeLibrary: gccAvailable ? fakes.good : undefined,
    wrongAbiLibrary: gccAvailable ? fakes.wrongAbi : undefined,
    // Its device count fails with cudaErrorInsufficientDriver, as on a machine without a driver.
    noDriverLibrary: gccAvailable ? fakes.oldDriver : undefined,
    secondCopySpecModule: `file://${dir}/copy/lib/masks/spec.ts`,
    notALibrary,
    gccMissing: gccAvailable ? undefined : "gcc is not here to build the fake library",
    sentinels: [
      AttnMaskSpec.varlen([3, 5, 2]),
      AttnMaskSpec.slidingWindow(9, { left: 2, right: 1 }),
      AttnMaskSpec.prefixTree([2, 2, 3], [[0, 1], [0, 2]]),
    ],
  };
}

/** Removes the temporary directory. */
export function disposeBadInputEnv(env: BadInputEnv): void {
  try {
    Deno.removeSync(env.dir, { recursive: true });
  } catch {
    // Already gone, or a loaded library still maps it: nothing to do.
  }
}

/**
 * A comparable deep copy of `value`: typed arrays as bytes (so NaN payloads count), specs by their slices
 * and totals, device tensors by shape, dtype, disposal and contents, objects by class, frozenness and own
 * properties (accessors not invoked). Cycle-safe.
 */
export async function snapshot(value: unknown, seen: Map<object, number> = new Map()): Promise<unknown> {
  if (typeof value === "number") return Object.is(value, -0) ? "-0" : Number.isNaN(value) ? "NaN" : value;
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "symbol") return value.toString();
  if (typeof value === "function") return `function ${value.name}`;
  if (value === null || typeof value !== "object") return value ?? "undefined";
  if (seen.has(value)) return `[cycle ${seen.get(value)}]`;
  seen.set(value, seen.size);
  if (isAttnMaskSpec(value)) {
    const { qRanges, kRanges, attnTypes } = specSliceArrays(value);
    return {
      class: "AttnMaskSpec",
      totals: [value.totalSeqlenQ, value.totalSeqlenK],
      slices: [Array.from(qRanges), Array.from(kRanges), Array.from(attnTypes)],
    };
  }
  if (value instanceof DeviceTensor) {
    const contents = value.disposed ? null : Array.from(new Uint8Array((await toHost(value)).data.buffer));
    return {
      class: "DeviceTensor",
      shape: [...value.shape],
      dtype: value.dtype,
      disposed: value.disposed,
      contents,
    };
  }
  if (ArrayBuffer.isView(value)) {
    return {
      class: value.constructor.name,
      bytes: Array.from(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)),
    };
  }
  if (value instanceof Map || value instanceof Set) {
    const entries = [];
    for (const entry of value.entries()) entries.push(await snapshot(entry, seen));
    return { class: value.constructor.name, entries };
  }
  if (Array.isArray(value)) {
    const items = [];
    for (const item of value) items.push(await snapshot(item, seen));
    return { class: "Array", frozen: Object.isFrozen(value), items };
  }
  const properties: [string, unknown][] = [];
  for (const name of Object.getOwnPropertyNames(value).sort()) {
    const descriptor = Object.getOwnPropertyDescriptor(value, name)!;
    properties.push([name, "value" in descriptor ? await snapshot(descriptor.value, seen) : "[accessor]"]);
  }
  return { class: value.constructor?.name ?? "null-prototype", frozen: Object.isFrozen(value), properties };
}

/** The compiled-key cache as it can be observed: its size and the sentinels' cached keys. */
function cacheState(env: BadInputEnv): { size: number; keys: FlexKey[]; arrays: string } {
  const keys = env.sentinels.map((spec) => compileFlexKey(spec));
  const arrays = JSON.stringify(
    keys.map((key) => [key.qRanges, key.kRanges, key.attnTypeMap].map((a) => Array.from(a))),
  );
  return { size: flexKeyCacheSize(), keys, arrays };
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Runs one row: setup, snapshots, the call, the checks. Never throws. */
export async function runBadInputCase(row: BadInputCase, env: BadInputEnv): Promise<BadInputResult> {
  const base = { id: row.id, area: row.area, title: row.title, expectedClass: row.errorClass, bug: row.bug };
  if (row.needsGcc && env.fakeLibrary === undefined) {
    return { ...base, passed: true, problems: [], skipped: env.gccMissing ?? "gcc missing" };
  }
  if (row.needsNoGpu && probeCudaBackend().available) {
    return { ...base, passed: true, problems: [], skipped: "this machine has a usable GPU" };
  }
  const problems: string[] = [];
  let run: CaseRun;
  try {
    run = await row.setup(env);
  } catch (error) {
    return { ...base, passed: false, problems: [`setup failed: ${error}`] };
  }
  try {
    const cacheBefore = cacheState(env);
    const inputsBefore = await snapshot(run.inputs);
    let thrown: unknown = undefined, threw = false;
    try {
      await run.call();
    } catch (error) {
      thrown = error;
      threw = true;
    }
    const inputsAfter = await snapshot(run.inputs);
    const sizeAfter = flexKeyCacheSize();
    const cacheAfter = cacheState(env);
    const inputsUnchanged = deepEqual(inputsBefore, inputsAfter) && run.remoteInputsUnchanged !== false;
    const cacheUnchanged = sizeAfter === cacheBefore.size && cacheAfter.arrays === cacheBefore.arrays &&
      cacheAfter.keys.every((key, index) => key === cacheBefore.keys[index]);
    if (!inputsUnchanged) problems.push("the call changed its inputs");
    if (!cacheUnchanged) problems.push("the call changed the compiled-key cache");
    const error = thrown as { name?: unknown; message?: unknown; field?: unknown } | undefined;
    const errorClass = !threw ? "none" : typeof error?.name === "string" ? error.name : typeof thrown;
    const message = threw ? String(error?.message ?? thrown) : undefined;
    const field = typeof error?.field === "string" ? error.field : undefined;
    if (!threw) problems.push("no error was thrown");
    else {
      if (errorClass !== row.errorClass) problems.push(`threw ${errorClass}, expected ${row.errorClass}`);
      if (row.errorClass === "MagiAttnInputError") {
        if (!(thrown instanceof MagiAttnInputError) && run.remoteInputsUnchanged === undefined) {
          problems.push("not an instance of MagiAttnInputError");
        }
        if (field !== row.field) {
          problems.push(`field is ${JSON.stringify(field)}, expected ${JSON.stringify(row.field)}`);
        }
        if (!/Fix: /.test(message ?? "")) problems.push("the message gives no fix");
      }
      if (row.message && !row.message.test(message ?? "")) {
        problems.push(`message does not match ${row.message}`);
      }
    }
    return {
      ...base,
      errorClass,
      field,
      message,
      passed: problems.length === 0,
      problems,
      inputsUnchanged,
      cacheUnchanged,
    };
  } finally {
    run.cleanup?.();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers for the rows

/** q, k, v, dout, out (q's shape) and lse of a small problem; `key` covers `totalQ` × `totalK`. */
function problem(
  { totalQ = 6, totalK = 6, headsQ = 4, headsKV = 2, headDim = 8, dtype = "float32" as DType } = {},
) {
  const key = compileFlexKey(
    AttnMaskSpec.fromRanges({
      qRanges: [[0, totalQ]],
      kRanges: [[0, totalK]],
      maskTypes: ["causal"],
      totalSeqlenQ: totalQ,
      totalSeqlenK: totalK,
    }),
  );
  return {
    q: randomTensor([totalQ, headsQ, headDim], { seed: 1, dtype }),
    k: randomTensor([totalK, headsKV, headDim], { seed: 2, dtype }),
    v: randomTensor([totalK, headsKV, headDim], { seed: 3, dtype }),
    dout: randomTensor([totalQ, headsQ, headDim], { seed: 4, dtype }),
    out: randomTensor([totalQ, headsQ, headDim], { seed: 5, dtype }),
    lse: tensor(new Float32Array(totalQ * headsQ), [totalQ, headsQ]),
    key,
  };
}

/** A row calling flexFlashAttnForward on the CPU with one input replaced. */
function forwardRow(
  id: string,
  title: string,
  field: string,
  change: (inputs: ReturnType<typeof problem>) => Partial<ReturnType<typeof problem>> & { opts?: unknown },
  message?: RegExp,
): BadInputCase {
  return {
    id,
    area: id.split(".")[0],
    title,
    errorClass: "MagiAttnInputError",
    field,
    message,
    setup: () => {
      const good = problem();
      const inputs = { ...good, opts: { backend: "cpu" } as unknown, ...change(good) };
      return {
        inputs,
        call: () =>
          flexFlashAttnForward(
            inputs.q,
            inputs.k,
            inputs.v,
            inputs.key,
            inputs.opts as Parameters<typeof flexFlashAttnForward>[4],
          ),
      };
    },
  };
}

/** A row calling flexFlashAttnBackward on the CPU with one input replaced. */
function backwardRow(
  id: string,
  title: string,
  field: string,
  change: (inputs: ReturnType<typeof problem>) => Partial<ReturnType<typeof problem>>,
): BadInputCase {
  return {
    id,
    area: id.split(".")[0],
    title,
    errorClass: "MagiAttnInputError",
    field,
    setup: () => {
      const good = problem();
      const inputs = { ...good, ...change(good) };
      return {
        inputs,
        call: () =>
          flexFlashAttnBackward(
            inputs.dout,
            inputs.q,
            inputs.k,
            inputs.v,
            inputs.out,
            inputs.lse,
            inputs.key,
            {
              backend: "cpu",
            },
          ),
      };
    },
  };
}

/** A row whose call is `call(...inputs)` on plain inputs. */
function simpleRow(
  id: string,
  area: string,
  title: string,
  field: string,
  inputs: () => unknown[],
  call: (...args: never[]) => unknown,
  message?: RegExp,
): BadInputCase {
  return {
    id,
    area,
    title,
    errorClass: "MagiAttnInputError",
    field,
    message,
    setup: () => {
      const args = inputs();
      return { inputs: args, call: () => (call as (...args: unknown[]) => unknown)(...args) };
    },
  };
}

/** Shape-only stand-in of a tensor (validation reads shape and dtype only): no allocation. */
function shapeOnly(shape: number[], dtype = "float32"): HostTensor {
  return { shape, dtype } as unknown as HostTensor;
}

class FakeSelfAttention {
  readonly isAttentionModule = true;
}

class FakeModel {
  config = { attnImplementation: "sdpa" };
  layers = [{ selfAttn: new FakeSelfAttention() }, { selfAttn: new FakeSelfAttention() }];
}

/** A two-layer "magi" model with causal(8) stamped whose first layer only has run its magi forward. */
async function stampedModelAfterFirstLayer(): Promise<FakeModel> {
  const model = new FakeModel();
  model.config.attnImplementation = "magi";
  setAttnSpecOnAttention(model, AttnMaskSpec.causal(8));
  const q = randomTensor([1, 2, 8, 4]);
  await magiAttentionForward(model.layers[0].selfAttn, q, q, q, null, {});
  return model;
}

let scriptCount = 0;

/** Runs `code` in a fresh `deno run` with only `flags`; it prints one JSON line `{ name, message, field, unchanged }`. */
async function runScript(
  env: BadInputEnv,
  code: string,
  flags: readonly string[],
): Promise<Record<string, unknown>> {
  const script = `${env.dir}/script_${scriptCount++}.ts`;
  Deno.writeTextFileSync(script, code);
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-lock", "--no-config", "--no-prompt", ...flags, script],
    cwd: env.dir,
    clearEnv: true,
    env: { HOME: Deno.env.get("HOME") ?? "/tmp", PATH: Deno.env.get("PATH") ?? "" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(output.stdout).trim();
  try {
    return JSON.parse(text.split("\n").pop() ?? "");
  } catch {
    throw new Error(
      `subprocess printed ${JSON.stringify(text)}; stderr: ${new TextDecoder().decode(output.stderr)}`,
    );
  }
}

/** A row that runs a call in a subprocess without some permissions and rethrows the error it saw. */
function permissionRow(
  id: string,
  title: string,
  flags: readonly string[],
  body: string,
  message: RegExp,
): BadInputCase {
  return {
    id,
    area: "permissions",
    title,
    errorClass: "NotCapable",
    message,
    setup: (env) => {
      const code = `
        import * as magi from "${REPO_ROOT}mod.ts";
        const q = magi.randomTensor([4, 2, 64], { seed: 1, dtype: "bfloat16" });
        const key = magi.compileFlexKey(magi.AttnMaskSpec.causal(4));
        const before = JSON.stringify([Array.from(q.data), Array.from(key.qRanges)]);
        let result;
        try { ${body}; result = { name: "none" }; }
        catch (error) { result = { name: error.name, message: error.message, field: error.field }; }
        result.unchanged = before === JSON.stringify([Array.from(q.data), Array.from(key.qRanges)]);
        console.log(JSON.stringify(result));`;
      const run: CaseRun = {
        inputs: { flags: [...flags] },
        call: async () => {
          const result = await runScript(env, code, flags);
          run.remoteInputsUnchanged = result.unchanged === true;
          if (result.name === "none") return;
          const error = new Error(String(result.message));
          error.name = String(result.name);
          if (typeof result.field === "string") Object.assign(error, { field: result.field });
          throw error;
        },
      };
      return run;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// The table

/** Every row of the bad-input table. */
export const BAD_INPUT_CASES: readonly BadInputCase[] = [
  // Spec builders.
  simpleRow(
    "spec.varlen.negative-length",
    "spec",
    "a negative document length",
    "seqlens[1]",
    () => [[3, -1]],
    AttnMaskSpec.varlen,
  ),
  simpleRow(
    "spec.varlen.fractional-length",
    "spec",
    "a fractional document length",
    "seqlens[0]",
    () => [[2.5]],
    AttnMaskSpec.varlen,
  ),
  simpleRow(
    "spec.varlen.not-an-array",
    "spec",
    "lengths given as a string",
    "seqlens",
    () => ["5 3"],
    AttnMaskSpec.varlen,
  ),
  simpleRow(
    "spec.varlen.int32-total",
    "spec",
    "documents summing to 2^31 tokens (int32 overflow)",
    "seqlens",
    () => [[2 ** 30, 2 ** 30]],
    AttnMaskSpec.varlen,
    /2147483647.*int32/,
  ),
  simpleRow(
    "spec.varlen.causal-not-boolean",
    "spec",
    'options.causal is "yes"',
    "options.causal",
    () => [[4], { causal: "yes" }],
    AttnMaskSpec.varlen,
  ),
  simpleRow(
    "spec.cuSeqlens.nonzero-start",
    "spec",
    "cuSeqlens starting at 2",
    "cuSeqlens[0]",
    () => [[2, 5]],
    AttnMaskSpec.fromCuSeqlens,
  ),
  simpleRow(
    "spec.cuSeqlens.decreasing",
    "spec",
    "decreasing cuSeqlens",
    "cuSeqlens[2]",
    () => [[0, 5, 3]],
    AttnMaskSpec.fromCuSeqlens,
  ),
  simpleRow(
    "spec.causal.int32-tokens",
    "spec",
    "causal over 2^31 tokens",
    "n",
    () => [2 ** 31],
    AttnMaskSpec.causal,
  ),
  simpleRow(
    "spec.slidingWindow.left-below-minus-one",
    "spec",
    "window left = −2",
    "window.left",
    () => [8, { left: -2, right: 0 }],
    AttnMaskSpec.slidingWindow,
    /−1 for unbounded/,
  ),
  simpleRow(
    "spec.slidingWindow.no-window",
    "spec",
    "window missing",
    "window",
    () => [8, null],
    AttnMaskSpec.slidingWindow,
  ),
  simpleRow(
    "spec.prefixTree.node-out-of-range",
    "spec",
    "a path names node 5 of 2",
    "samplePaths[0][1]",
    () => [[2, 2], [[0, 5]]],
    AttnMaskSpec.prefixTree,
  ),
  simpleRow(
    "spec.prefixTree.two-parents",
    "spec",
    "a node with different parents in two paths",
    "samplePaths[1][1]",
    () => [[1, 1, 1], [[0, 2], [1, 2]]],
    AttnMaskSpec.prefixTree,
  ),
  simpleRow(
    "spec.prefixTree.orphan-node",
    "spec",
    "a node on no path",
    "nodeLengths[1]",
    () => [[1, 1], [[0]]],
    AttnMaskSpec.prefixTree,
  ),
  simpleRow(
    "spec.prefixTree.repeated-node",
    "spec",
    "a path visiting a node twice",
    "samplePaths[0][2]",
    () => [[1, 1], [[0, 1, 0]]],
    AttnMaskSpec.prefixTree,
  ),
  simpleRow(
    "spec.prefixLM.prefix-too-long",
    "spec",
    "prefix longer than the sequence",
    "prefixLen",
    () => [10, 5],
    AttnMaskSpec.prefixLM,
  ),
  simpleRow(
    "spec.blockCausal.zero-block",
    "spec",
    "block size 0",
    "blockSize",
    () => [0, 8],
    AttnMaskSpec.blockCausal,
  ),
  simpleRow(
    "spec.fromRanges.reversed-range",
    "spec",
    "a query range with end < start",
    "qRanges[0]",
    () => [{ qRanges: [[5, 2]], kRanges: [[0, 4]], maskTypes: ["full"] }],
    AttnMaskSpec.fromRanges,
  ),
  simpleRow(
    "spec.fromRanges.past-total",
    "spec",
    "a key range past totalSeqlenK",
    "kRanges[0]",
    () => [{ qRanges: [[0, 4]], kRanges: [[0, 9]], maskTypes: ["full"], totalSeqlenK: 8 }],
    AttnMaskSpec.fromRanges,
  ),
  simpleRow(
    "spec.fromRanges.unknown-type",
    "spec",
    'mask type "diagonal"',
    "maskTypes[0]",
    () => [{ qRanges: [[0, 4]], kRanges: [[0, 4]], maskTypes: ["diagonal"] }],
    AttnMaskSpec.fromRanges,
    /"full", "causal", "inv_causal", "bi_causal"/,
  ),
  simpleRow(
    "spec.fromRanges.count-mismatch",
    "spec",
    "two query ranges, one key range",
    "kRanges",
    () => [{ qRanges: [[0, 2], [2, 4]], kRanges: [[0, 4]], maskTypes: [0, 0] }],
    AttnMaskSpec.fromRanges,
  ),
  simpleRow(
    "spec.fromRanges.nan-bound",
    "spec",
    "a NaN range end",
    "qRanges[0][1]",
    () => [{ qRanges: [[0, NaN]], kRanges: [[0, 4]], maskTypes: [0] }],
    AttnMaskSpec.fromRanges,
  ),
  {
    id: "spec.constructor",
    area: "spec",
    title: "new AttnMaskSpec(...) instead of a builder",
    errorClass: "MagiAttnInputError",
    field: "new AttnMaskSpec",
    setup: () => ({
      inputs: [],
      call: () => new (AttnMaskSpec as unknown as new (...args: unknown[]) => unknown)(Symbol(), 1),
    }),
  },

  // Flex keys.
  simpleRow(
    "key.compile.overlap",
    "key",
    "two slices covering the same cell",
    "slices 0 and 1",
    () => [
      AttnMaskSpec.fromRanges({ qRanges: [[0, 4], [2, 6]], kRanges: [[0, 4], [0, 4]], maskTypes: [0, 1] }),
    ],
    compileFlexKey,
    /cell \(q=2, k=0\)/,
  ),
  simpleRow(
    "key.compile.not-a-spec",
    "key",
    "compileFlexKey of a plain object",
    "spec",
    () => [{}],
    compileFlexKey,
  ),
  simpleRow("key.toFlexKey.null", "key", "toFlexKey(null)", "key", () => [null], toFlexKey),
  simpleRow(
    "key.toFlexKey.typed-length",
    "key",
    "typed key ranges of the wrong length",
    "key.qRanges",
    () => [{
      qRanges: Int32Array.of(0, 4, 4),
      kRanges: Int32Array.of(0, 4),
      attnTypeMap: Int32Array.of(1),
      totalQ: 4,
      totalK: 4,
    }],
    toFlexKey,
  ),
  simpleRow(
    "key.toFlexKey.typed-out-of-bounds",
    "key",
    "a typed key range past totalK",
    "kRanges[0]",
    () => [{
      qRanges: Int32Array.of(0, 4),
      kRanges: Int32Array.of(0, 9),
      attnTypeMap: Int32Array.of(1),
      totalQ: 4,
      totalK: 4,
    }],
    toFlexKey,
  ),
  simpleRow(
    "key.toFlexKey.mixed-array-kinds",
    "key",
    "Int32Array qRanges with plain-array kRanges",
    "key.kRanges",
    () => [{
      qRanges: Int32Array.of(0, 4),
      kRanges: [[0, 4]],
      attnTypeMap: Int32Array.of(1),
      totalQ: 4,
      totalK: 4,
    }],
    toFlexKey,
  ),
  simpleRow(
    "key.toFlexKey.int32-total",
    "key",
    "a typed key with totalQ = 2^31",
    "key.totalQ",
    () => [{
      qRanges: Int32Array.of(0, 4),
      kRanges: Int32Array.of(0, 4),
      attnTypeMap: Int32Array.of(0),
      totalQ: 2 ** 31,
      totalK: 4,
    }],
    toFlexKey,
  ),
  simpleRow(
    "key.denseMask.too-large",
    "key",
    "denseMask of 2^28 cells",
    "key",
    () => [compileFlexKey(AttnMaskSpec.causal(1 << 14))],
    denseMask,
    /2\^26/,
  ),
  simpleRow(
    "key.sliceArea.negative",
    "key",
    "sliceArea with a negative length",
    "lq",
    () => [-1, 4, 0],
    sliceArea,
  ),

  // Tensors and shapes (CPU backend).
  forwardRow("tensors.q-rank-2", "q of rank 2", "q.shape", () => ({ q: randomTensor([6, 32]) })),
  forwardRow(
    "tensors.unknown-dtype",
    "q of dtype float64",
    "q.dtype",
    () => ({ q: shapeOnly([6, 4, 8], "float64") }),
  ),
  forwardRow(
    "tensors.dtype-mismatch",
    "k in bfloat16, q in float32",
    "k.dtype",
    () => ({ k: randomTensor([6, 2, 8], { dtype: "bfloat16" }) }),
  ),
  forwardRow(
    "tensors.gqa-ratio",
    "3 kv heads for 4 query heads",
    "k.shape",
    () => ({ k: randomTensor([6, 3, 8]), v: randomTensor([6, 3, 8]) }),
    /GQA/,
  ),
  forwardRow(
    "tensors.head-dim-mismatch",
    "k head dim 16, q 8",
    "k.shape",
    () => ({ k: randomTensor([6, 2, 16]) }),
  ),
  forwardRow(
    "tensors.v-shape",
    "v with fewer tokens than k",
    "v.shape",
    () => ({ v: randomTensor([5, 2, 8]) }),
  ),
  forwardRow(
    "tensors.tokens-vs-key",
    "q with 7 tokens, key for 6",
    "q.shape",
    () => ({ q: randomTensor([7, 4, 8]) }),
    /totalQ = 6/,
  ),
  forwardRow(
    "tensors.int32-elements",
    "q of 2^31 elements (shape only, nothing allocated)",
    "q.shape",
    () => ({
      q: shapeOnly([2 ** 21, 16, 64]),
      k: shapeOnly([4, 16, 64]),
      v: shapeOnly([4, 16, 64]),
      key: compileFlexKey(
        AttnMaskSpec.fromRanges({
          qRanges: [],
          kRanges: [],
          maskTypes: [],
          totalSeqlenQ: 2 ** 21,
          totalSeqlenK: 4,
        }),
      ),
    }),
    /2\^31.*int32/,
  ),
  forwardRow(
    "tensors.plain-key-overlap",
    "a plain key whose slices overlap",
    "slices 0 and 1",
    () => ({
      key: {
        qRanges: [[0, 6], [0, 6]],
        kRanges: [[0, 6], [0, 6]],
        attnTypeMap: [0, 1],
      } as unknown as FlexKey,
    }),
  ),
  backwardRow("tensors.backward.lse-dtype", "lse in bfloat16", "lse.dtype", () => ({
    lse: tensor(new Uint16Array(24), [6, 4], "bfloat16"),
  })),
  backwardRow("tensors.backward.out-shape", "out with 2 heads, q with 4", "out.shape", () => ({
    out: randomTensor([6, 2, 8]),
  })),
  backwardRow("tensors.backward.dout-dtype", "dout in float16, q in float32", "dout.dtype", () => ({
    dout: randomTensor([6, 4, 8], { dtype: "float16" }),
  })),
  backwardRow("tensors.backward.lse-shape", "lse transposed", "lse.shape", () => ({
    lse: tensor(new Float32Array(24), [4, 6]),
  })),

  // Options.
  forwardRow(
    "options.softmax-scale-zero",
    "softmaxScale 0",
    "opts.softmaxScale",
    () => ({ opts: { softmaxScale: 0 } }),
  ),
  forwardRow("options.softcap-negative", "softcap −1", "opts.softcap", () => ({ opts: { softcap: -1 } })),
  forwardRow(
    "options.backend-unknown",
    'backend "tpu"',
    "opts.backend",
    () => ({ opts: { backend: "tpu" } }),
    /"auto", "cpu", "cuda"/,
  ),
  forwardRow(
    "options.deterministic-string",
    'deterministic "yes"',
    "opts.deterministic",
    () => ({ opts: { deterministic: "yes" } }),
  ),
  {
    ...forwardRow("options.null", "options null", "opts", () => ({ opts: null })),
  },
  {
    ...forwardRow(
      "tensors.q-null-plain-key",
      "q null with a plain (uncompiled) key",
      "q.shape",
      () => ({
        q: null as unknown as HostTensor,
        key: { qRanges: [[0, 6]], kRanges: [[0, 6]], attnTypeMap: [1] } as never,
      }),
    ),
  },

  // Backends.
  {
    id: "backend.cuda-missing-library",
    area: "backend",
    title: 'backend "cuda" with a libraryPath that does not exist',
    errorClass: "BackendUnavailableError",
    message:
      /CUDA backend is not available[\s\S]*\/nonexistent\/libmagi_ffa\.so \(option libraryPath\)[\s\S]*deno task build/,
    setup: () => {
      const inputs = {
        ...problem({ headDim: 64, dtype: "bfloat16" }),
        libraryPath: "/nonexistent/libmagi_ffa.so",
      };
      return {
        inputs,
        call: () =>
          flexFlashAttnForward(inputs.q, inputs.k, inputs.v, inputs.key, {
            backend: "cuda",
            libraryPath: inputs.libraryPath,
          }),
      };
    },
  },
  {
    id: "backend.cuda-without-gpu",
    area: "backend",
    title: 'backend "cuda" on a machine without a usable GPU (default library lookup)',
    errorClass: "BackendUnavailableError",
    message: /CUDA backend is not available: .*backend "cpu"/s,
    needsNoGpu: true,
    setup: () => {
      const inputs = problem({ headDim: 64, dtype: "bfloat16" });
      return {
        inputs,
        call: () => flexFlashAttnForward(inputs.q, inputs.k, inputs.v, inputs.key, { backend: "cuda" }),
      };
    },
  },
  {
    id: "backend.cuda-float32",
    area: "backend",
    title: 'float32 inputs with backend "cuda" (fake library)',
    errorClass: "MagiAttnInputError",
    field: "q.dtype",
    message: /bfloat16 and float16.*backend "cpu"/,
    needsGcc: true,
    setup: (env) => {
      const inputs = problem({ headDim: 64 });
      return {
        inputs,
        call: () =>
          flexFlashAttnForward(inputs.q, inputs.k, inputs.v, inputs.key, {
            backend: "cuda",
            libraryPath: env.fakeLibrary,
          }),
      };
    },
  },
  {
    id: "backend.cuda-head-dim",
    area: "backend",
    title: 'head dim 96 with backend "cuda" (fake library)',
    errorClass: "MagiAttnInputError",
    field: "q.shape",
    message: /head dim 96.*64 and 128.*backend "cpu"/,
    needsGcc: true,
    setup: (env) => {
      const inputs = problem({ headDim: 96, dtype: "bfloat16" });
      return {
        inputs,
        call: () =>
          flexFlashAttnForward(inputs.q, inputs.k, inputs.v, inputs.key, {
            backend: "cuda",
            libraryPath: env.fakeLibrary,
          }),
      };
    },
  },
  {
    id: "backend.cpu-with-device-tensors",
    area: "backend",
    title: 'DeviceTensors with backend "cpu" (fake library)',
    errorClass: "MagiAttnInputError",
    field: "opts.backend",
    message: /toHost/,
    needsGcc: true,
    setup: (env) => {
      const host = problem({ headDim: 64, dtype: "bfloat16" });
      const options = { libraryPath: env.fakeLibrary };
      const inputs = {
        q: toDevice(host.q, options),
        k: toDevice(host.k, options),
        v: toDevice(host.v, options),
        key: host.key,
      };
      return {
        inputs,
        call: () => flexFlashAttnForward(inputs.q, inputs.k, inputs.v, inputs.key, { backend: "cpu" }),
        cleanup: () => [inputs.q, inputs.k, inputs.v].forEach((item) => item.dispose()),
      };
    },
  },

  // Device tensors (fake library).
  {
    id: "device.use-after-dispose",
    area: "device",
    title: "a disposed DeviceTensor passed to flexFlashAttnForward",
    errorClass: "Error",
    message: /DeviceTensor \[6, 4, 64\] bfloat16 used after dispose\(\)\. Fix: keep the tensor alive/,
    needsGcc: true,
    setup: (env) => {
      const host = problem({ headDim: 64, dtype: "bfloat16" });
      const options = { libraryPath: env.fakeLibrary };
      const inputs = {
        q: toDevice(host.q, options),
        k: toDevice(host.k, options),
        v: toDevice(host.v, options),
        key: host.key,
      };
      inputs.q.dispose();
      return {
        inputs,
        call: () => flexFlashAttnForward(inputs.q, inputs.k, inputs.v, inputs.key, options),
        cleanup: () => [inputs.k, inputs.v].forEach((item) => item.dispose()),
      };
    },
  },
  {
    id: "device.to-host-after-dispose",
    area: "device",
    title: "toHost of a disposed DeviceTensor",
    errorClass: "Error",
    message: /used after dispose\(\)\. Fix:/,
    needsGcc: true,
    setup: (env) => {
      const device = toDevice(randomTensor([3, 2], { dtype: "float16" }), { libraryPath: env.fakeLibrary });
      device.dispose();
      return { inputs: [device], call: () => toHost(device) };
    },
  },
  {
    id: "device.empty-device-dtype",
    area: "device",
    title: 'emptyDevice with dtype "int8"',
    errorClass: "MagiAttnInputError",
    field: "dtype",
    needsGcc: true,
    setup: (env) => ({
      inputs: [[2, 2], "int8"],
      call: () => emptyDevice([2, 2], "int8" as DType, { libraryPath: env.fakeLibrary }),
    }),
  },
  {
    id: "device.to-device-mismatch",
    area: "device",
    title: "toDevice of a tensor whose data does not match its shape",
    errorClass: "MagiAttnInputError",
    field: "host.data",
    needsGcc: true,
    setup: (env) => {
      const host = { data: new Float32Array(3), shape: [4], dtype: "float32" } as HostTensor;
      return { inputs: [host], call: () => toDevice(host, { libraryPath: env.fakeLibrary }) };
    },
  },
  {
    id: "device.constructor",
    area: "device",
    title: "new DeviceTensor(...) by hand",
    errorClass: "TypeError",
    message: /toDevice\(\.\.\.\) or emptyDevice\(\.\.\.\)/,
    setup: () => ({
      inputs: [],
      call: () => new DeviceTensor(Symbol() as never, null as never, null, [1], "float16"),
    }),
  },

  // The library loader.
  {
    id: "library.wrong-abi",
    area: "library",
    title: "a libmagi_ffa.so of another ABI version (gcc-built fake, ABI 999)",
    errorClass: "BackendUnavailableError",
    message: new RegExp(
      `ABI version 999 but this magi-attn needs ABI version ${MAGI_FFA_ABI_VERSION}; rebuild it with \`deno task build\``,
    ),
    needsGcc: true,
    setup: (env) => {
      const inputs = problem({ headDim: 64, dtype: "bfloat16" });
      return {
        inputs,
        call: () =>
          flexFlashAttnForward(inputs.q, inputs.k, inputs.v, inputs.key, {
            backend: "cuda",
            libraryPath: env.wrongAbiLibrary,
          }),
      };
    },
  },
  {
    id: "library.not-a-library",
    area: "library",
    title: "libraryPath pointing at a text file",
    errorClass: "BackendUnavailableError",
    message:
      /could not load the CUDA library[\s\S]*not_a_library\/libmagi_ffa\.so \(option libraryPath\)[\s\S]*Fix: build it/,
    setup: (env) => {
      const host = randomTensor([2, 2], { dtype: "bfloat16" });
      return { inputs: [host], call: () => toDevice(host, { libraryPath: env.notALibrary }) };
    },
  },
  {
    id: "library.missing",
    area: "library",
    title: "toDevice with a libraryPath that does not exist",
    errorClass: "BackendUnavailableError",
    message: /\/nonexistent\/dir\/libmagi_ffa\.so \(option libraryPath\)[\s\S]*MAGI_FFA_LIBRARY/,
    setup: () => {
      const host = randomTensor([2, 2], { dtype: "bfloat16" });
      return {
        inputs: [host],
        call: () => toDevice(host, { libraryPath: "/nonexistent/dir/libmagi_ffa.so" }),
      };
    },
  },

  // Permissions (subprocesses).
  permissionRow(
    "permissions.no-ffi-cuda",
    'backend "cuda" without --allow-ffi',
    ["--allow-env", "--allow-read"],
    `await magi.flexFlashAttnForward(q, q, q, key, { backend: "cuda" })`,
    /--allow-ffi/,
  ),
  permissionRow(
    "permissions.no-env-cuda",
    'backend "cuda" without --allow-env (the library lookup reads MAGI_FFA_LIBRARY)',
    ["--allow-ffi", "--allow-read"],
    `await magi.flexFlashAttnForward(q, q, q, key, { backend: "cuda" })`,
    /MAGI_FFA_LIBRARY.*--allow-env/,
  ),
  permissionRow(
    "permissions.no-ffi-to-device",
    "toDevice without --allow-ffi",
    ["--allow-env", "--allow-read"],
    `magi.toDevice(q, { libraryPath: "/tmp/libmagi_ffa.so" })`,
    /--allow-ffi/,
  ),

  // Registry.
  simpleRow(
    "registry.unknown-name",
    "registry",
    'attnImplementation "flash_attention_9"',
    "attnImplementation",
    () => ["flash_attention_9"],
    (name: string) => ALL_ATTENTION_FUNCTIONS.get(name),
    /"magi".*"sdpa"/,
  ),
  simpleRow(
    "registry.register-non-function",
    "registry",
    "registering a number as an attention function",
    "fn",
    () => ["broken", 5],
    (name: string, fn: never) => AttentionInterface.register(name, fn),
  ),
  simpleRow(
    "registry.register-empty-name",
    "registry",
    "registering under the empty name",
    "name",
    () => ["", () => Promise.resolve([null, null])],
    (name: string, fn: never) => AttentionInterface.register(name, fn),
  ),

  // The magi forward (HF path) and the factory path.
  {
    id: "magi.dropout",
    area: "magi",
    title: "dropout 0.1",
    errorClass: "MagiAttnInputError",
    field: "opts.dropout",
    setup: () => {
      const inputs = {
        module: new FakeSelfAttention(),
        q: randomTensor([1, 2, 8, 4]),
        options: { dropout: 0.1 },
      };
      return {
        inputs,
        call: () => magiAttentionForward(inputs.module, inputs.q, inputs.q, inputs.q, null, inputs.options),
      };
    },
  },
  {
    id: "magi.attention-mask",
    area: "magi",
    title: "a dense attention mask",
    errorClass: "MagiAttnInputError",
    field: "attentionMask",
    message: /setAttnSpecOnAttention/,
    setup: () => {
      const inputs = {
        module: new FakeSelfAttention(),
        q: randomTensor([1, 2, 8, 4]),
        mask: { data: new Uint8Array(64).fill(1), shape: [8, 8] },
      };
      return {
        inputs,
        call: () => magiAttentionForward(inputs.module, inputs.q, inputs.q, inputs.q, inputs.mask, {}),
      };
    },
  },
  {
    id: "magi.unknown-option",
    area: "magi",
    title: "an option attention functions do not take",
    errorClass: "MagiAttnInputError",
    field: "opts.foo",
    setup: () => {
      const inputs = { module: new FakeSelfAttention(), q: randomTensor([1, 2, 8, 4]), options: { foo: 1 } };
      return {
        inputs,
        call: () =>
          magiAttentionForward(inputs.module, inputs.q, inputs.q, inputs.q, null, inputs.options as never),
      };
    },
  },
  {
    id: "magi.spec-wrong-length",
    area: "magi",
    title: "a stamped spec of 5 tokens for an 8-token input",
    errorClass: "MagiAttnInputError",
    field: "module._magiAttnSpec",
    setup: () => {
      const inputs = {
        module: Object.assign(new FakeSelfAttention(), { _magiAttnSpec: AttnMaskSpec.causal(5) }),
        q: randomTensor([1, 2, 8, 4]),
      };
      return {
        inputs,
        call: () => magiAttentionForward(inputs.module, inputs.q, inputs.q, inputs.q, null, {}),
      };
    },
  },
  {
    id: "magi.spec-with-batch",
    area: "magi",
    title: "a stamped spec with batch 2",
    errorClass: "MagiAttnInputError",
    field: "query.shape[0]",
    setup: () => {
      const inputs = {
        module: Object.assign(new FakeSelfAttention(), { _magiAttnSpec: AttnMaskSpec.causal(8) }),
        q: randomTensor([2, 2, 8, 4]),
      };
      return {
        inputs,
        call: () => magiAttentionForward(inputs.module, inputs.q, inputs.q, inputs.q, null, {}),
      };
    },
  },
  {
    id: "magi.factory-unknown-option",
    area: "magi",
    title: "makeMagiAttnFunc call with an unknown option",
    errorClass: "MagiAttnInputError",
    field: "options.causal",
    setup: () => {
      const inputs = { q: randomTensor([8, 2, 4]), options: { causal: true } };
      return {
        inputs,
        call: () => makeMagiAttnFunc()(inputs.q, inputs.q, inputs.q, inputs.options as never),
      };
    },
  },
  {
    id: "magi.factory-cu-seqlens-with-window",
    area: "magi",
    title: "cuSeqlens starting at 1 together with windowSize",
    errorClass: "MagiAttnInputError",
    field: "cuSeqlens[0]",
    setup: () => {
      const inputs = {
        q: randomTensor([8, 2, 4]),
        options: { cuSeqlens: [1, 9], windowSize: [2, 0] as const },
      };
      return { inputs, call: () => makeMagiAttnFunc()(inputs.q, inputs.q, inputs.q, inputs.options) };
    },
  },

  // The stamping guard.
  {
    id: "guard.not-consumed",
    area: "guard",
    title: "stamping a step whose previous spec no magi forward consumed",
    errorClass: "AttnSpecNotConsumedError",
    message:
      /not consumed by 2 of them[\s\S]*"sdpa"[\s\S]*Fix: set config\.attnImplementation = "magi"[\s\S]*resetAttnSpecGuard\(model\)/,
    setup: () => {
      const model = new FakeModel();
      setAttnSpecOnAttention(model, AttnMaskSpec.causal(8));
      const inputs = { model, next: AttnMaskSpec.varlen([4, 4]) };
      return {
        inputs,
        call: () => setAttnSpecOnAttention(inputs.model, inputs.next),
        cleanup: () => resetAttnSpecGuard(model),
      };
    },
  },
  {
    id: "guard.close-unconsumed",
    area: "guard",
    title: "closing a step whose spec was not consumed",
    errorClass: "AttnSpecNotConsumedError",
    message: /Fix:/,
    setup: () => {
      const model = new FakeModel();
      setAttnSpecOnAttention(model, AttnMaskSpec.causal(8));
      return {
        inputs: { model },
        call: () => closeAttnSpecStep(model),
        cleanup: () => resetAttnSpecGuard(model),
      };
    },
  },
  simpleRow(
    "guard.spec-not-a-spec",
    "guard",
    "stamping a plain object as the spec",
    "spec",
    () => [new FakeModel(), { qRanges: [] }],
    setAttnSpecOnAttention,
  ),
  simpleRow(
    "guard.no-attention-modules",
    "guard",
    "stamping a model without attention modules",
    "model",
    () => [{ layers: [{ mlp: {} }] }, AttnMaskSpec.causal(4)],
    setAttnSpecOnAttention,
    /isAttentionModule/,
  ),

  // Issue 10: a mask can never be dropped or swapped silently, options are strict, errors say what and how.
  {
    id: "guard.failed-magi-then-fallback",
    area: "guard",
    title: "a magi forward that throws in the kernel call, then an sdpa fallback: closing the step",
    errorClass: "AttnSpecNotConsumedError",
    message: /threw before producing output[\s\S]*resetAttnSpecGuard\(model\)/,
    setup: async () => {
      const model = { config: { attnImplementation: "magi" }, layers: [new FakeSelfAttention()] };
      setAttnSpecOnAttention(model, AttnMaskSpec.causal(8));
      const q = randomTensor([1, 2, 8, 4], { dtype: "bfloat16" }), k = randomTensor([1, 2, 8, 4]);
      await magiAttentionForward(model.layers[0], q, k, k, null, {}).catch(() => undefined);
      await sdpaAttentionForward(model.layers[0], k, k, k, null, {});
      return {
        inputs: { model },
        call: () => closeAttnSpecStep(model),
        cleanup: () => resetAttnSpecGuard(model),
      };
    },
  },
  {
    id: "guard.partial-consumption",
    area: "guard",
    title: "two attention layers, one ran magi and one did not: closing the step names the other",
    errorClass: "AttnSpecNotConsumedError",
    message: /not consumed by 1 of them: layers\[1\]\.selfAttn[\s\S]*allowSkip/,
    setup: async () => {
      const model = await stampedModelAfterFirstLayer();
      return {
        inputs: { model },
        call: () => closeAttnSpecStep(model),
        cleanup: () => resetAttnSpecGuard(model),
      };
    },
  },
  {
    id: "guard.stamp-over-open-step",
    area: "guard",
    title: "stamping the next step while the current one is only partly consumed (its forward unfinished)",
    errorClass: "AttnSpecNotConsumedError",
    message: /not consumed by 1 of them[\s\S]*finish the step's forward before stamping the next/,
    setup: async () => {
      const model = await stampedModelAfterFirstLayer();
      return {
        inputs: { model },
        call: () => setAttnSpecOnAttention(model, AttnMaskSpec.varlen([4, 4])),
        cleanup: () => resetAttnSpecGuard(model),
      };
    },
  },
  {
    id: "guard.shared-module",
    area: "guard",
    title: "stamping a module another model's armed step stamped",
    errorClass: "MagiAttnInputError",
    field: "model",
    message: /shares its attention module layers\[0\]\.selfAttn with another model/,
    setup: () => {
      const first = new FakeModel();
      const second = { layers: [{ selfAttn: first.layers[0].selfAttn }] };
      setAttnSpecOnAttention(first, AttnMaskSpec.causal(8));
      return {
        inputs: { second },
        call: () => setAttnSpecOnAttention(second, AttnMaskSpec.varlen([4, 4])),
        cleanup: () => resetAttnSpecGuard(first),
      };
    },
  },
  {
    id: "guard.frozen-module",
    area: "guard",
    title: "stamping a model whose second attention module is frozen",
    errorClass: "MagiAttnInputError",
    field: "model.layers[1].selfAttn",
    message: /is frozen[\s\S]*no module was stamped/,
    setup: () => {
      const model = new FakeModel();
      Object.freeze(model.layers[1].selfAttn);
      return { inputs: { model }, call: () => setAttnSpecOnAttention(model, AttnMaskSpec.causal(8)) };
    },
  },
  simpleRow(
    "guard.allow-skip-everything",
    "guard",
    "allowSkip letting every module skip the spec",
    "options.allowSkip",
    () => [new FakeModel(), AttnMaskSpec.causal(8), { allowSkip: 2 }],
    setAttnSpecOnAttention,
    /the guard could never fire/,
  ),
  simpleRow(
    "guard.unknown-stamp-option",
    "guard",
    "a misspelled stamping option",
    "options.alowSkip",
    () => [new FakeModel(), AttnMaskSpec.causal(8), { alowSkip: 1 }],
    setAttnSpecOnAttention,
    /did you mean `allowSkip`/,
  ),
  forwardRow(
    "options.unknown-forward-key",
    "flexFlashAttnForward with { scale: 100 }",
    "opts.scale",
    () => ({ opts: { backend: "cpu", scale: 100 } }),
    /did you mean `softmaxScale`\?[\s\S]*the valid keys are softmaxScale, softcap, backend, deterministic, libraryPath/,
  ),
  forwardRow(
    "options.string-softmax-scale",
    'softmaxScale "0.5" (a string)',
    "opts.softmaxScale",
    () => ({ opts: { backend: "cpu", softmaxScale: "0.5" } }),
    /"0\.5" \(a string\), not a number/,
  ),
  simpleRow(
    "options.unknown-varlen-key",
    "spec",
    "AttnMaskSpec.varlen([4], { casual: false })",
    "options.casual",
    () => [[4], { casual: false }],
    (lengths: number[], options: never) => AttnMaskSpec.varlen(lengths, options),
    /did you mean `causal`/,
  ),
  simpleRow(
    "options.unknown-random-tensor-key",
    "tensors",
    "randomTensor with { sead: 1 }",
    "options.sead",
    () => [[2, 2], { sead: 1 }],
    (shape: number[], options: never) => randomTensor(shape, options),
    /did you mean `seed`/,
  ),
  simpleRow(
    "options.unknown-svg-key",
    "svg",
    "maskToSvg with { titel }",
    "options.titel",
    () => [AttnMaskSpec.causal(4), { titel: "x" }],
    (spec: AttnMaskSpec, options: never) => maskToSvg(spec, options),
    /did you mean `title`/,
  ),
  simpleRow(
    "options.unknown-backend-info-key",
    "backend",
    "backendInfo with { library }",
    "options.library",
    () => [{ library: "/x" }],
    (options: never) => backendInfo(options),
    /did you mean `libraryPath`/,
  ),
  simpleRow(
    "options.unknown-to-device-key",
    "device",
    "toDevice with { libraryPth } (checked before any library is loaded)",
    "opts.libraryPth",
    () => [randomTensor([2, 2], { dtype: "bfloat16" }), { libraryPth: "/x" }],
    (host: HostTensor, options: never) => toDevice(host, options),
    /did you mean `libraryPath`/,
  ),
  simpleRow(
    "options.unknown-attention-option",
    "registry",
    "sdpa with { scale } instead of { scaling }",
    "opts.scale",
    () => [new FakeSelfAttention(), randomTensor([1, 2, 8, 4]), { scale: 0.5 }],
    (module: object, q: HostTensor, options: never) => sdpaAttentionForward(module, q, q, q, null, options),
    /did you mean `scaling`/,
  ),
  simpleRow(
    "options.symbol-scaling",
    "magi",
    "scaling: Symbol()",
    "opts.scaling",
    () => [new FakeSelfAttention(), randomTensor([1, 2, 8, 4]), { scaling: Symbol("s") }],
    (module: object, q: HostTensor, options: never) => magiAttentionForward(module, q, q, q, null, options),
    /is a symbol, not a number/,
  ),
  simpleRow(
    "magi.factory-window-size",
    "magi",
    "the factory's windowSize [-5, 0]",
    "options.windowSize[0]",
    () => [randomTensor([8, 2, 4]), { windowSize: [-5, 0] }],
    (q: HostTensor, options: never) => makeMagiAttnFunc()(q, q, q, options),
    /−1 for an unbounded side/,
  ),
  simpleRow(
    "magi.null-module",
    "magi",
    "the magi registry function called with module = null",
    "module",
    () => [null, randomTensor([1, 2, 8, 4])],
    (module: never, q: HostTensor) => magiAttentionForward(module, q, q, q, null, {}),
    /pass the calling attention module/,
  ),
  forwardRow(
    "tensors.float32-data-labelled-bfloat16",
    "a hand-built q whose Float32Array data is labelled bfloat16 (k and v real bfloat16)",
    "q.data",
    (good) => ({
      q: { data: new Float32Array(good.q.data.length), shape: good.q.shape, dtype: "bfloat16" } as HostTensor,
      k: randomTensor(good.k.shape, { dtype: "bfloat16" }),
      v: randomTensor(good.v.shape, { dtype: "bfloat16" }),
    }),
    /Float32Array but q\.dtype is bfloat16/,
  ),
  forwardRow(
    "tensors.uint16-data-labelled-float32",
    "a hand-built k whose Uint16Array data is labelled float32",
    "k.data",
    (good) => ({
      k: { data: new Uint16Array(good.k.data.length), shape: good.k.shape, dtype: "float32" } as HostTensor,
    }),
  ),
  forwardRow(
    "tensors.data-shorter-than-shape",
    "a hand-built v whose data is shorter than its shape",
    "v.data",
    (good) => ({ v: { data: new Float32Array(5), shape: good.v.shape, dtype: "float32" } as HostTensor }),
  ),
  simpleRow(
    "registry.sdpa-data-labelled-bfloat16",
    "registry",
    "sdpa with a Float32Array query labelled bfloat16",
    "query.data",
    () => [new FakeSelfAttention(), { data: new Float32Array(64), shape: [1, 2, 8, 4], dtype: "bfloat16" }],
    (module: object, q: HostTensor) =>
      sdpaAttentionForward(module, q, randomTensor([1, 2, 8, 4]), q, null, {}),
  ),
  simpleRow(
    "registry.sdpa-clamped-mask",
    "registry",
    "sdpa with a Uint8ClampedArray boolean mask",
    "attentionMask.data",
    () => [randomTensor([1, 2, 8, 4]), { data: new Uint8ClampedArray(64), shape: [8, 8] }],
    (q: HostTensor, mask: never) => sdpaAttentionForward(new FakeSelfAttention(), q, q, q, mask, {}),
    /Uint8ClampedArray[\s\S]*Uint8Array\.from/,
  ),
  simpleRow(
    "registry.sdpa-short-mask",
    "registry",
    "sdpa with a boolean mask shorter than its shape",
    "attentionMask.data",
    () => [randomTensor([1, 2, 8, 4]), { data: new Uint8Array(10).fill(1), shape: [8, 8] }],
    (q: HostTensor, mask: never) => sdpaAttentionForward(new FakeSelfAttention(), q, q, q, mask, {}),
  ),
  simpleRow(
    "spec.prototype-only",
    "spec",
    "Object.create(AttnMaskSpec.prototype) as a spec",
    "spec",
    () => [Object.create(AttnMaskSpec.prototype)],
    compileFlexKey,
    /not built by an AttnMaskSpec builder/,
  ),
  {
    id: "spec.from-a-second-copy",
    area: "spec",
    title: "a spec built by a second copy of the module",
    errorClass: "MagiAttnInputError",
    field: "spec",
    message: /from another copy of magi-attn/,
    setup: async (env) => {
      const copy = await import(env.secondCopySpecModule);
      const foreign = copy.AttnMaskSpec.causal(8);
      return { inputs: [foreign], call: () => setAttnSpecOnAttention(new FakeModel(), foreign) };
    },
  },
  simpleRow(
    "spec.bigint-cu-seqlens",
    "spec",
    "fromCuSeqlens([0n, 5n])",
    "cuSeqlens[0]",
    () => [[0n, 5n]],
    (cu: never) => AttnMaskSpec.fromCuSeqlens(cu),
    /is a bigint \(0n\), not an integer[\s\S]*Number\(\.\.\.\)/,
  ),
  simpleRow(
    "tensors.random-negative-shape",
    "tensors",
    "randomTensor([2, -3])",
    "shape[1]",
    () => [[2, -3]],
    (shape: number[]) => randomTensor(shape),
  ),
  simpleRow(
    "tensors.random-nan-shape",
    "tensors",
    "randomTensor([NaN, 2])",
    "shape[0]",
    () => [[NaN, 2]],
    (shape: number[]) => randomTensor(shape),
    /is NaN, not/,
  ),
  simpleRow(
    "tensors.random-huge-shape",
    "tensors",
    "randomTensor([1e6, 1e6, 128])",
    "shape",
    () => [[1e6, 1e6, 128]],
    (shape: number[]) => randomTensor(shape),
    /2\^31/,
  ),
  {
    id: "device.no-driver",
    area: "device",
    title: "toDevice where the library loads but there is no driver (gcc-built fake)",
    errorClass: "BackendUnavailableError",
    message: /not available for device tensors[\s\S]*Fix:/,
    needsGcc: true,
    setup: (env) => {
      const host = randomTensor([2, 2], { dtype: "bfloat16" });
      return { inputs: [host], call: () => toDevice(host, { libraryPath: env.noDriverLibrary }) };
    },
  },

  // Pictures.
  simpleRow(
    "svg.max-cells",
    "svg",
    "maskToSvg with maxCells 0",
    "options.maxCells",
    () => [AttnMaskSpec.causal(4), { maxCells: 0 }],
    maskToSvg,
  ),
];
