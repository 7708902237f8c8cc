/**
 * The fast CPU path (lib/backends/cpu/): bit for bit the reference (lib/backends/reference.ts) on every mask type, GQA/MQA,
 * softcap, empty rows and all three dtypes, on worker threads and in the calling thread, for any number of
 * threads and on repeated runs; within the float64 oracle's tolerances at sizes that span many tiles and
 * tasks; and the event loop keeps running during a large call.
 */

import assert from "node:assert/strict";
import { cpuBackward, cpuForward, lastCpuRun } from "../lib/backends/cpu/attention.ts";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { compileFlexKey, toFlexKey } from "../lib/masks/flex_key.ts";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import { type DType, type HostTensor, randomTensor, tensor, toFloat32 } from "../lib/core/tensor.ts";
import type { FlexKey } from "../lib/core/types.ts";
import { randomReferenceCase, REFERENCE_TOLERANCES } from "./fuzz_reference_cases.ts";
import { caseSeed } from "./support/fuzz.ts";
import { denseAttentionBackwardOracle, denseAttentionOracle, relativeError } from "./support/oracle.ts";

const FULL = 0, CAUSAL = 1, INVCAUSAL = 2, BICAUSAL = 3;

/** Slices `[qStart, qEnd, kStart, kEnd, type]`. */
type Slice = readonly [number, number, number, number, number];

function keyOf(slices: readonly Slice[], totalQ: number, totalK: number): FlexKey {
  return toFlexKey({
    qRanges: slices.map(([qs, qe]) => [qs, qe] as const),
    kRanges: slices.map(([, , ks, ke]) => [ks, ke] as const),
    attnTypeMap: slices.map((slice) => slice[4]),
  }, { totalQ, totalK });
}

/** Dense visibility of the slices, straight from the type table (independent of the kernels' intervals). */
function denseMask(slices: readonly Slice[], totalQ: number, totalK: number): Uint8Array {
  const mask = new Uint8Array(totalQ * totalK);
  for (const [qs, qe, ks, ke, type] of slices) {
    for (let i = qs; i < qe; i++) {
      for (let j = ks; j < ke; j++) {
        const below = j - i <= ke - qe, above = j - i >= ks - qs;
        const visible = type === FULL || (type === CAUSAL && below) || (type === INVCAUSAL && above) ||
          (type === BICAUSAL && below && above);
        if (visible) mask[i * totalK + j] = 1;
      }
    }
  }
  return mask;
}

interface Problem {
  name: string;
  slices: readonly Slice[];
  totalQ: number;
  totalK: number;
  headsQ: number;
  headsKV: number;
  headDim: number;
  dtype: DType;
  softcap?: number;
  softmaxScale?: number;
}

interface Inputs {
  q: HostTensor;
  k: HostTensor;
  v: HostTensor;
  dout: HostTensor;
  key: FlexKey;
  options: { softcap?: number; softmaxScale?: number };
}

function inputsOf(problem: Problem, seed = 7): Inputs {
  const { totalQ, totalK, headsQ, headsKV, headDim, dtype } = problem;
  return {
    q: randomTensor([totalQ, headsQ, headDim], { seed, dtype }),
    k: randomTensor([totalK, headsKV, headDim], { seed: seed + 1, dtype }),
    v: randomTensor([totalK, headsKV, headDim], { seed: seed + 2, dtype }),
    dout: randomTensor([totalQ, headsQ, headDim], { seed: seed + 3, dtype }),
    key: keyOf(problem.slices, totalQ, totalK),
    options: { softcap: problem.softcap, softmaxScale: problem.softmaxScale },
  };
}

/** Same length and the same bits everywhere (NaN equals NaN, +0 differs from −0). */
function assertSameBits(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let index = 0; index < actual.length; index++) {
    if (!Object.is(actual[index], expected[index])) {
      assert.fail(`${what}: element ${index} is ${actual[index]}, the reference has ${expected[index]}`);
    }
  }
}

interface Outputs {
  out: HostTensor;
  lse: HostTensor;
  dq: HostTensor;
  dk: HostTensor;
  dv: HostTensor;
}

async function runCpu(inputs: Inputs, threads: number): Promise<Outputs & { modes: string[] }> {
  const { q, k, v, dout, key, options } = inputs;
  const forward = await cpuForward(q, k, v, key, { ...options, threads });
  const forwardMode = lastCpuRun().mode;
  const grads = await cpuBackward(dout, q, k, v, forward.out, forward.lse, key, { ...options, threads });
  return { ...forward, ...grads, modes: [forwardMode, lastCpuRun().mode] };
}

function runReference(inputs: Inputs): Outputs {
  const { q, k, v, dout, key, options } = inputs;
  const forward = referenceForward(q, k, v, key, options);
  return { ...forward, ...referenceBackward(dout, q, k, v, forward.out, forward.lse, key, options) };
}

function assertSameOutputs(actual: Outputs, expected: Outputs, what: string): void {
  for (const name of ["out", "lse", "dq", "dk", "dv"] as const) {
    assert.equal(actual[name].dtype, expected[name].dtype, `${what}: ${name} dtype`);
    assert.deepEqual(actual[name].shape, expected[name].shape, `${what}: ${name} shape`);
    assertSameBits(actual[name].data, expected[name].data, `${what}: ${name}`);
  }
}

// Sizes above the in-thread threshold (3e7 FLOPs), so `threads` > 0 really uses the worker pool, and long
// enough for many 64-row blocks and several tasks per head.
const LARGE: readonly Problem[] = [
  {
    name: "causal 512, GQA 4/2, D 64, float32",
    slices: [[0, 512, 0, 512, CAUSAL]],
    totalQ: 512,
    totalK: 512,
    headsQ: 4,
    headsKV: 2,
    headDim: 64,
    dtype: "float32",
  },
  {
    name: "packed documents with Lq ≠ Lk (causal and full), MQA 4/1, D 40, bfloat16",
    slices: [[0, 150, 0, 200, CAUSAL], [150, 400, 200, 260, CAUSAL], [400, 600, 260, 600, FULL]],
    totalQ: 600,
    totalK: 600,
    headsQ: 4,
    headsKV: 1,
    headDim: 40,
    dtype: "bfloat16",
  },
  {
    name: "sliding window (causal + bi-causal + inv-causal), softcap, D 24, float16",
    slices: [[0, 100, 0, 300, CAUSAL], [100, 500, 0, 700, BICAUSAL], [500, 700, 300, 700, INVCAUSAL]],
    totalQ: 700,
    totalK: 700,
    headsQ: 6,
    headsKV: 3,
    headDim: 24,
    dtype: "float16",
    softcap: 3,
  },
  {
    name: "rows shared by two slices (lse merge) and empty rows (causal Lq > Lk), scale 0.3, float32",
    slices: [[0, 400, 0, 150, FULL], [0, 400, 150, 500, CAUSAL], [400, 800, 500, 600, CAUSAL]],
    totalQ: 800,
    totalK: 600,
    headsQ: 2,
    headsKV: 2,
    headDim: 64,
    dtype: "float32",
    softmaxScale: 0.3,
  },
];

Deno.test("cpuForward/Backward are bit-identical to the reference, on workers and in the calling thread", async (t) => {
  for (const problem of LARGE) {
    await t.step(problem.name, async () => {
      const inputs = inputsOf(problem);
      const expected = runReference(inputs);
      for (const threads of [2, 3, 0]) {
        const actual = await runCpu(inputs, threads);
        assert.deepEqual(actual.modes, threads > 0 ? ["workers", "workers"] : ["in-thread", "in-thread"]);
        assertSameOutputs(actual, expected, `${problem.name}, threads ${threads}`);
      }
    });
  }
});

Deno.test("results do not depend on the number of threads and repeat exactly", async () => {
  const inputs = inputsOf(LARGE[0], 31);
  const first = await runCpu(inputs, 1);
  for (const threads of [1, 2, 4, 5, 0]) {
    const again = await runCpu(inputs, threads);
    assertSameOutputs(again, first, `threads ${threads} vs threads 1`);
  }
});

Deno.test("within the float64 oracle's tolerances at sizes spanning many tiles and tasks", async (t) => {
  for (const problem of [LARGE[0], LARGE[3], LARGE[1]]) {
    await t.step(problem.name, async () => {
      const inputs = inputsOf(problem, 11);
      const actual = await runCpu(inputs, 2);
      const mask = denseMask(problem.slices, problem.totalQ, problem.totalK);
      const oracleOptions = {
        softcap: problem.softcap ?? 0,
        softmaxScale: problem.softmaxScale ?? 1 / Math.sqrt(problem.headDim),
      };
      const tolerance = REFERENCE_TOLERANCES[problem.dtype];
      const expected = denseAttentionOracle(inputs.q, inputs.k, inputs.v, mask, oracleOptions);
      const outError = relativeError(toFloat32(actual.out), expected.out);
      assert.ok(outError <= tolerance.out, `out relative error ${outError}`);
      const lseError = relativeError(actual.lse.data as Float32Array, expected.lse);
      assert.ok(lseError <= tolerance.lse, `lse relative error ${lseError}`);
      const grads = denseAttentionBackwardOracle(
        inputs.dout,
        inputs.q,
        inputs.k,
        inputs.v,
        mask,
        oracleOptions,
      );
      for (const name of ["dq", "dk", "dv"] as const) {
        const error = relativeError(toFloat32(actual[name]), grads[name]);
        assert.ok(error <= tolerance.grads, `${name} relative error ${error} > ${tolerance.grads}`);
      }
    });
  }
});

Deno.test("fuzz: 300 random small problems (every mask builder, dtype, GQA, softcap) match the reference bits", async () => {
  const kinds = new Set<string>();
  for (let index = 0; index < 300; index++) {
    const seed = caseSeed(0x5eed, index);
    const random = randomReferenceCase(seed);
    const key = compileFlexKey(random.specCase.build());
    const { dtype, headsQ, headsKV, headDim, softcap, softmaxScale, spread } = random;
    const inputs: Inputs = {
      q: randomTensor([key.totalQ, headsQ, headDim], { seed: seed + 1, dtype, scale: spread }),
      k: randomTensor([key.totalK, headsKV, headDim], { seed: seed + 2, dtype, scale: spread }),
      v: randomTensor([key.totalK, headsKV, headDim], { seed: seed + 3, dtype }),
      dout: randomTensor([key.totalQ, headsQ, headDim], { seed: seed + 4, dtype }),
      key,
      options: { softcap, softmaxScale },
    };
    kinds.add(random.specCase.builder);
    assertSameOutputs(
      await runCpu(inputs, 0),
      runReference(inputs),
      `seed=${seed} ${random.specCase.description}`,
    );
  }
  assert.ok(kinds.size >= 6, `builders drawn: ${[...kinds].join(", ")}`);
});

Deno.test("inputs with NaN or ±∞ go to the reference and give its bits", async () => {
  const problem = LARGE[0];
  const inputs = inputsOf(problem, 3);
  const values = toFloat32(inputs.v).slice();
  values[5 * 2 * 64 + 3] = Infinity; // key 5, kv head 0: visible to later rows, masked for rows 0..4
  values[300 * 2 * 64 + 64] = NaN;
  const withSpecials = { ...inputs, v: tensor(values, inputs.v.shape) };
  const actual = await runCpu(withSpecials, 2);
  assert.equal(actual.modes[0], "reference");
  assertSameOutputs(actual, runReference(withSpecials), "non-finite v");
});

Deno.test("the event loop keeps running during a large call (a 50 ms timer keeps ticking)", async (t) => {
  const problem: Problem = {
    ...LARGE[0],
    name: "causal 1024, 8 heads",
    totalQ: 1024,
    totalK: 1024,
    headsQ: 8,
    headsKV: 8,
  };
  problem.slices = [[0, 1024, 0, 1024, CAUSAL]];
  const inputs = inputsOf(problem);
  for (const threads of [2, 0]) {
    await t.step(threads > 0 ? "on workers" : "in the calling thread, between tasks", async () => {
      const ticks: number[] = [];
      const timer = setInterval(() => ticks.push(performance.now()), 50);
      const start = performance.now();
      try {
        await runCpu(inputs, threads);
      } finally {
        clearInterval(timer);
      }
      const end = performance.now();
      const stamps = [start, ...ticks, end];
      const longestGap = Math.max(...stamps.slice(1).map((stamp, index) => stamp - stamps[index]));
      const elapsed = end - start;
      // Blocked, the timer would not tick at all; running, it ticks about every 50 ms. Loose bounds, since
      // other processes may share the machine.
      assert.ok(
        ticks.length >= Math.min(3, elapsed / 200),
        `${ticks.length} ticks in ${elapsed.toFixed(0)} ms`,
      );
      assert.ok(longestGap < 600, `the event loop stalled for ${longestGap.toFixed(0)} ms`);
    });
  }
});

Deno.test("a bad threads option is a MagiAttnInputError naming it, and nothing runs", async () => {
  const inputs = inputsOf({ ...LARGE[0], totalQ: 8, totalK: 8, slices: [[0, 8, 0, 8, CAUSAL]] });
  for (const threads of [-1, 1.5, NaN]) {
    await assert.rejects(
      cpuForward(inputs.q, inputs.k, inputs.v, inputs.key, { threads }),
      (error: unknown) => error instanceof MagiAttnInputError && /opts\.threads/.test(error.message),
    );
  }
});
