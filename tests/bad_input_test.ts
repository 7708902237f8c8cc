/**
 * Bad input across the public API (the table of tests/bad_input_cases.ts: each row must throw the named
 * error class with the field and the fix, leaving its inputs and the compiled-key cache unchanged), and
 * numerical edge cases of the CPU reference: huge logits, NaN/Inf inputs, head dims the GPU does not take
 * (auto falls back, "cuda" fails loudly), int32 element-count limits at their exact boundary.
 */

import assert from "node:assert/strict";
import { BackendUnavailableError, MagiAttnInputError } from "../lib/core/errors.ts";
import { backendInfo, flexFlashAttnForward } from "../lib/backends/ffa.ts";
import { compileFlexKey, flexKeyCacheSize, toFlexKey } from "../lib/masks/flex_key.ts";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { fromFloat32, type HostTensor, randomTensor, toFloat32 } from "../lib/core/tensor.ts";
import { validateBackwardArgs, validateForwardArgs } from "../lib/core/validate.ts";
import { toDevice } from "../ffi/device.ts";
import { probeCudaBackend } from "../ffi/library.ts";
import {
  BAD_INPUT_CASES,
  type BadInputCase,
  disposeBadInputEnv,
  prepareBadInputEnv,
  runBadInputCase,
} from "./bad_input_cases.ts";
import { denseAttentionOracle, maxAbsDiff, relativeError } from "./support/oracle.ts";

const env = prepareBadInputEnv();
globalThis.addEventListener("unload", () => disposeBadInputEnv(env));
if (env.gccMissing) console.log(`fake-library rows skipped: ${env.gccMissing}`);

Deno.test("bad-input table: at least 40 distinct classes with unique ids, each naming what it expects", () => {
  const ids = BAD_INPUT_CASES.map((row) => row.id);
  assert.equal(new Set(ids).size, ids.length, "ids are unique");
  assert.ok(ids.length >= 40, `${ids.length} rows`);
  const areas = new Set(BAD_INPUT_CASES.map((row) => row.area));
  for (
    const area of [
      "spec",
      "key",
      "tensors",
      "options",
      "backend",
      "device",
      "library",
      "permissions",
      "registry",
      "magi",
      "guard",
    ]
  ) {
    assert.ok(areas.has(area), `area ${area} has rows`);
  }
  for (const row of BAD_INPUT_CASES) {
    if (row.errorClass === "MagiAttnInputError") {
      assert.ok(row.field, `${row.id}: a MagiAttnInputError row names its field`);
    } else assert.ok(row.message, `${row.id}: a ${row.errorClass} row says what its message must contain`);
    if (row.bug) assert.match(row.bug, /^BUG: /, row.id);
  }
});

Deno.test("bad-input table: every row throws the named error, changing no input and no cached key", async (t) => {
  for (const row of BAD_INPUT_CASES) {
    // Rows documenting a known defect elsewhere (row.bug, "BUG: ...") fail until it is fixed: ignored here.
    await t.step({
      name: `${row.bug ? "BUG " : ""}${row.id}: ${row.title}`,
      ignore: row.bug !== undefined,
      fn: async () => {
        const result = await runBadInputCase(row, env);
        if (result.skipped) {
          console.log(`  skipped: ${result.skipped}`);
          return;
        }
        assert.ok(
          result.passed,
          `${row.id}: ${
            result.problems.join("; ")
          }\n  threw ${result.errorClass} field=${result.field}: ${result.message}`,
        );
        assert.equal(result.inputsUnchanged, true);
        assert.equal(result.cacheUnchanged, true);
      },
    });
  }
});

Deno.test("the table runner itself catches changed inputs, a polluted cache, wrong fields and no error", async () => {
  const base = { area: "meta", title: "meta", errorClass: "MagiAttnInputError", field: "x" } as const;
  const rows: [BadInputCase, RegExp][] = [
    [{
      ...base,
      id: "meta.mutates",
      setup: () => {
        const inputs = { data: new Float32Array(4) };
        return {
          inputs,
          call: () => {
            inputs.data[2] = NaN;
            throw new MagiAttnInputError("x", "is bad", "fix it");
          },
        };
      },
    }, /changed its inputs/],
    [{
      ...base,
      id: "meta.caches",
      setup: () => ({
        inputs: [],
        call: () => {
          compileFlexKey(AttnMaskSpec.varlen([flexKeyCacheSize() + 1000, 7, 7]));
          throw new MagiAttnInputError("x", "is bad", "fix it");
        },
      }),
    }, /compiled-key cache/],
    [{
      ...base,
      id: "meta.wrong-field",
      setup: () => ({ inputs: [], call: () => AttnMaskSpec.causal(-1) }),
    }, /field is "n", expected "x"/],
    [{ ...base, id: "meta.no-error", setup: () => ({ inputs: [], call: () => 1 }) }, /no error was thrown/],
    [{
      ...base,
      id: "meta.wrong-class",
      setup: () => ({
        inputs: [],
        call: () => {
          throw new TypeError("x");
        },
      }),
    }, /threw TypeError, expected MagiAttnInputError/],
  ];
  for (const [row, problem] of rows) {
    const result = await runBadInputCase(row, env);
    assert.equal(result.passed, false, row.id);
    assert.match(result.problems.join("; "), problem, row.id);
  }
});

// ---------------------------------------------------------------------------------------------------------
// Numerical edge cases of the CPU reference

/** float32 tensor from values. */
function f32(values: ArrayLike<number>, shape: number[]): HostTensor {
  return fromFloat32(values, shape, "float32");
}

Deno.test("huge logits (q·k ~ 1e4): finite out, lse equal to a log-space float64 computation", () => {
  const totalQ = 12, headsQ = 2, headsKV = 1, headDim = 16;
  const q = randomTensor([totalQ, headsQ, headDim], { seed: 11, scale: 25 });
  const k = randomTensor([totalQ, headsKV, headDim], { seed: 12, scale: 25 });
  const v = randomTensor([totalQ, headsKV, headDim], { seed: 13 });
  const spec = AttnMaskSpec.fromRanges({
    qRanges: [[0, 5], [5, 12], [5, 12]],
    kRanges: [[0, 5], [0, 5], [5, 12]],
    maskTypes: ["causal", "full", "causal"],
  });
  const key = compileFlexKey(spec);
  const visible = (i: number, j: number) => (i < 5 ? j <= i : j <= i);
  for (const softcap of [0, 50]) {
    const options = { softmaxScale: 1, softcap };
    const { out, lse } = referenceForward(q, k, v, key, options);
    const outValues = toFloat32(out), lseValues = lse.data as Float32Array;
    assert.ok(outValues.every(Number.isFinite), `softcap ${softcap}: out finite`);
    assert.ok(lseValues.every(Number.isFinite), `softcap ${softcap}: lse finite`);
    // lse in log space, written out here: m + log Σ exp(s − m), s the (capped) logits in float64.
    const qValues = toFloat32(q), kValues = toFloat32(k);
    let largestLogit = 0;
    for (let i = 0; i < totalQ; i++) {
      for (let head = 0; head < headsQ; head++) {
        const logits: number[] = [];
        for (let j = 0; j < totalQ; j++) {
          if (!visible(i, j)) continue;
          let dot = 0;
          for (let d = 0; d < headDim; d++) {
            dot += qValues[(i * headsQ + head) * headDim + d] * kValues[j * headDim + d];
          }
          logits.push(softcap > 0 ? softcap * Math.tanh(dot / softcap) : dot);
          largestLogit = Math.max(largestLogit, Math.abs(dot));
        }
        const max = Math.max(...logits);
        const expected = max + Math.log(logits.reduce((sum, s) => sum + Math.exp(s - max), 0));
        const actual = lseValues[i * headsQ + head];
        assert.ok(
          Math.abs(actual - expected) <= 1e-6 * Math.abs(expected) + 1e-3,
          `softcap ${softcap}, row ${i} head ${head}: lse ${actual} vs ${expected}`,
        );
      }
    }
    if (softcap === 0) assert.ok(largestLogit > 3000, `the test reaches large logits (${largestLogit})`);
    const oracle = denseAttentionOracle(q, k, v, visible, options);
    assert.ok(relativeError(outValues, oracle.out) < 1e-5, `softcap ${softcap}: out vs oracle`);
    const dout = randomTensor([totalQ, headsQ, headDim], { seed: 14 });
    const grads = referenceBackward(dout, q, k, v, out, lse, key, options);
    for (const name of ["dq", "dk", "dv"] as const) {
      assert.ok(toFloat32(grads[name]).every(Number.isFinite), `softcap ${softcap}: ${name} finite`);
    }
  }
});

Deno.test("NaN and Inf inputs propagate to exactly the rows that see them, without throwing", async (t) => {
  // Two causal documents of 4 tokens; Hq 2, Hkv 1.
  const key = compileFlexKey(AttnMaskSpec.varlen([4, 4]));
  const shapeQ = [8, 2, 8], shapeK = [8, 1, 8];
  const clean = {
    q: randomTensor(shapeQ, { seed: 21 }),
    k: randomTensor(shapeK, { seed: 22 }),
    v: randomTensor(shapeK, { seed: 23 }),
    dout: randomTensor(shapeQ, { seed: 24 }),
  };
  const cleanForward = referenceForward(clean.q, clean.k, clean.v, key);
  const cleanOut = toFloat32(cleanForward.out), cleanLse = cleanForward.lse.data as Float32Array;
  /** Values of row (token, head) of a [T, H, D] array. */
  const row = (values: Float32Array, token: number, head: number, heads: number, d = 8) =>
    values.subarray((token * heads + head) * d, (token * heads + head + 1) * d);
  const poison = (source: HostTensor, index: number, value: number): HostTensor => {
    const values = Float32Array.from(toFloat32(source));
    values[index] = value;
    return f32(values, [...source.shape]);
  };

  /** Checks which (token, head) rows changed: `affected` rows must satisfy `check`, the rest equal bitwise. */
  const expectRows = (
    out: Float32Array,
    lse: Float32Array,
    affected: (token: number, head: number) => boolean,
    check: (outRow: Float32Array, lse: number, token: number, head: number) => void,
  ) => {
    for (let token = 0; token < 8; token++) {
      for (let head = 0; head < 2; head++) {
        if (affected(token, head)) check(row(out, token, head, 2), lse[token * 2 + head], token, head);
        else {
          assert.deepEqual(
            row(out, token, head, 2),
            row(cleanOut, token, head, 2),
            `row ${token} head ${head}`,
          );
          assert.equal(lse[token * 2 + head], cleanLse[token * 2 + head], `lse ${token} head ${head}`);
        }
      }
    }
  };

  await t.step("NaN in one query row: that row's out and lse are NaN, nothing else moves", () => {
    const q = poison(clean.q, (1 * 2 + 0) * 8 + 3, NaN); // token 1, head 0
    const { out, lse } = referenceForward(q, clean.k, clean.v, key);
    expectRows(
      toFloat32(out),
      lse.data as Float32Array,
      (token, head) => token === 1 && head === 0,
      (values, rowLse) => {
        assert.ok(values.every(Number.isNaN) && Number.isNaN(rowLse));
      },
    );
  });
  await t.step(
    "NaN in key 2: rows 2 and 3 (which see it) are NaN, rows 0, 1 and document 2 are untouched",
    () => {
      const k = poison(clean.k, 2 * 8 + 5, NaN);
      const { out, lse } = referenceForward(clean.q, k, clean.v, key);
      expectRows(
        toFloat32(out),
        lse.data as Float32Array,
        (token) => token === 2 || token === 3,
        (values, rowLse) => {
          assert.ok(values.every(Number.isNaN) && Number.isNaN(rowLse));
        },
      );
    },
  );
  await t.step("Inf in value 5: rows 5-7 get a non-finite out but the clean lse; others untouched", () => {
    const v = poison(clean.v, 5 * 8 + 1, Infinity);
    const { out, lse } = referenceForward(clean.q, clean.k, v, key);
    expectRows(
      toFloat32(out),
      lse.data as Float32Array,
      (token) => token >= 5,
      (values, rowLse, token, head) => {
        assert.ok(!Number.isFinite(values[1]), `row ${token}: the poisoned component is not finite`);
        assert.equal(rowLse, cleanLse[token * 2 + head], "v does not enter the lse");
      },
    );
  });
  await t.step("bfloat16 keeps NaN: same propagation", () => {
    const values = Float32Array.from(toFloat32(clean.q));
    values[(6 * 2 + 1) * 8] = NaN;
    const q = fromFloat32(values, shapeQ, "bfloat16");
    const k = fromFloat32(toFloat32(clean.k), shapeK, "bfloat16"),
      v = fromFloat32(toFloat32(clean.v), shapeK, "bfloat16");
    const { out, lse } = referenceForward(q, k, v, key);
    const outValues = toFloat32(out), lseValues = lse.data as Float32Array;
    for (let token = 0; token < 8; token++) {
      for (let head = 0; head < 2; head++) {
        const poisoned = token === 6 && head === 1;
        assert.equal(
          row(outValues, token, head, 2).some(Number.isNaN),
          poisoned,
          `row ${token} head ${head}`,
        );
        assert.equal(Number.isNaN(lseValues[token * 2 + head]), poisoned);
      }
    }
  });
  await t.step("backward with a NaN query row: no throw; document 2's gradients equal the clean ones", () => {
    const q = poison(clean.q, (1 * 2 + 0) * 8 + 3, NaN);
    const forward = referenceForward(q, clean.k, clean.v, key);
    const grads = referenceBackward(clean.dout, q, clean.k, clean.v, forward.out, forward.lse, key);
    const cleanGrads = referenceBackward(
      clean.dout,
      clean.q,
      clean.k,
      clean.v,
      cleanForward.out,
      cleanForward.lse,
      key,
    );
    const dq = toFloat32(grads.dq), cleanDq = toFloat32(cleanGrads.dq);
    assert.deepEqual(dq.subarray(4 * 16), cleanDq.subarray(4 * 16), "dq of document 2");
    for (const name of ["dk", "dv"] as const) {
      assert.deepEqual(
        toFloat32(grads[name]).subarray(4 * 8),
        toFloat32(cleanGrads[name]).subarray(4 * 8),
        name,
      );
    }
    assert.ok(row(dq, 1, 0, 2).some(Number.isNaN), "the poisoned row's dq is NaN");
  });
});

const gccRows = env.fakeLibrary === undefined;

Deno.test({
  name: 'head dims the GPU does not take: "auto" runs the CPU (proved with a fake GPU library)',
  ignore: gccRows,
  async fn() {
    const libraryPath = env.fakeLibrary!;
    assert.equal(backendInfo({ libraryPath }).backend, "cuda", "the fake library looks like a usable GPU");
    const key = compileFlexKey(AttnMaskSpec.causal(6));
    for (const headDim of [96, 32, 64]) {
      const q = randomTensor([6, 2, headDim], { seed: 31, dtype: "bfloat16" });
      const k = randomTensor([6, 1, headDim], { seed: 32, dtype: "bfloat16" });
      const v = randomTensor([6, 1, headDim], { seed: 33, dtype: "bfloat16" });
      const result = await flexFlashAttnForward(q, k, v, key, { libraryPath });
      // The fake kernel writes out = q and lse = 0, so the result says which backend ran.
      const ranOnFakeGpu = maxAbsDiff(toFloat32(result.out as HostTensor), toFloat32(q)) === 0;
      assert.equal(ranOnFakeGpu, headDim === 64, `head dim ${headDim}`);
      if (headDim !== 64) {
        const reference = referenceForward(q, k, v, key);
        assert.deepEqual(
          (result.out as HostTensor).data,
          reference.out.data,
          `head dim ${headDim}: the CPU result`,
        );
        await assert.rejects(
          () => flexFlashAttnForward(q, k, v, key, { backend: "cuda", libraryPath }),
          (error: unknown) => error instanceof MagiAttnInputError && error.field === "q.shape",
        );
      }
    }
    const f32Inputs = randomTensor([6, 2, 64], { seed: 34 });
    const f32Result = await flexFlashAttnForward(f32Inputs, f32Inputs, f32Inputs, key, { libraryPath });
    assert.deepEqual(
      (f32Result.out as HostTensor).data,
      referenceForward(f32Inputs, f32Inputs, f32Inputs, key).out.data,
      'float32 with "auto" runs the CPU too',
    );
  },
});

Deno.test('backend "cuda" fails loudly: unavailable backend named without a GPU, head dim named with one', async () => {
  const key = compileFlexKey(AttnMaskSpec.causal(4));
  const q = randomTensor([4, 2, 96], { seed: 41, dtype: "bfloat16" });
  const probe = probeCudaBackend();
  await assert.rejects(() => flexFlashAttnForward(q, q, q, key, { backend: "cuda" }), (error: unknown) => {
    if (probe.available) {
      assert.ok(error instanceof MagiAttnInputError && error.field === "q.shape", String(error));
    } else {
      assert.ok(error instanceof BackendUnavailableError, String(error));
      assert.match(error.message, /CUDA backend is not available/);
      assert.ok(error.message.includes(probe.reason!), "the message carries the probe's reason");
      assert.match(error.message, /use backend "cpu"/);
    }
    return true;
  });
  // "auto" never fails for this: head dim 96 goes to the CPU whatever the machine.
  const { out } = await flexFlashAttnForward(q, q, q, key);
  assert.deepEqual((out as HostTensor).data, referenceForward(q, q, q, key).out.data);
});

Deno.test('without --allow-ffi, "auto" runs on the CPU and says why (subprocess)', async () => {
  const root = new URL("../", import.meta.url).pathname;
  const script = `${env.dir}/auto_without_ffi.ts`;
  Deno.writeTextFileSync(
    script,
    `import * as magi from "${root}mod.ts";
     const q = magi.randomTensor([5, 2, 64], { seed: 3, dtype: "bfloat16" });
     const key = magi.compileFlexKey(magi.AttnMaskSpec.causal(5));
     const auto = await magi.flexFlashAttnForward(q, q, q, key);
     const cpu = await magi.flexFlashAttnForward(q, q, q, key, { backend: "cpu" });
     console.log(JSON.stringify({ info: magi.backendInfo(), same: JSON.stringify(Array.from(auto.out.data)) ===
       JSON.stringify(Array.from(cpu.out.data)) }));`,
  );
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-lock", "--no-config", "--no-prompt", "--allow-env", "--allow-read", script],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(output.stdout);
  assert.ok(output.success, new TextDecoder().decode(output.stderr));
  const result = JSON.parse(stdout);
  assert.equal(result.info.backend, "cpu");
  assert.match(result.info.reason, /--allow-ffi/);
  assert.equal(result.same, true);
});

Deno.test("int32 limits: 2^31 − 1 elements pass validation, 2^31 are refused (shape-only tensors)", () => {
  const shaped = (shape: number[], dtype = "bfloat16") => ({ shape, dtype });
  const emptyKey = (totalQ: number, totalK: number) =>
    compileFlexKey(
      AttnMaskSpec.fromRanges({
        qRanges: [],
        kRanges: [],
        maskTypes: [],
        totalSeqlenQ: totalQ,
        totalSeqlenK: totalK,
      }),
    );
  // 2^31 − 1 is prime, so the largest legal tensor is [2^31 − 1, 1, 1].
  const largest = 2 ** 31 - 1;
  const passes = validateForwardArgs(
    shaped([largest, 1, 1]),
    shaped([4, 1, 1]),
    shaped([4, 1, 1]),
    emptyKey(largest, 4),
  );
  assert.equal(passes.totalQ, largest);
  const refused = (call: () => unknown, field: string) =>
    assert.throws(call, (error: unknown) => {
      assert.ok(error instanceof MagiAttnInputError, String(error));
      assert.equal(error.field, field);
      assert.match(error.message, /2\^31.*int32/);
      return true;
    });
  refused(
    () =>
      validateForwardArgs(
        shaped([2 ** 21, 16, 64]),
        shaped([4, 16, 64]),
        shaped([4, 16, 64]),
        emptyKey(2 ** 21, 4),
      ),
    "q.shape",
  );
  refused(
    () =>
      validateForwardArgs(
        shaped([4, 8, 64]),
        shaped([2 ** 22, 8, 64]),
        shaped([2 ** 22, 8, 64]),
        emptyKey(4, 2 ** 22),
      ),
    "k.shape",
  );
  refused(
    () =>
      validateBackwardArgs(
        shaped([2 ** 21, 16, 64]),
        shaped([2 ** 21, 16, 64]),
        shaped([4, 16, 64]),
        shaped([4, 16, 64]),
        shaped([2 ** 21, 16, 64]),
        shaped([2 ** 21, 16], "float32"),
        emptyKey(2 ** 21, 4),
      ),
    "q.shape",
  );
  // Token counts: the largest int32 is a legal spec and key; one more is refused everywhere.
  assert.equal(compileFlexKey(AttnMaskSpec.causal(largest)).totalQ, largest);
  assert.throws(
    () => AttnMaskSpec.causal(largest + 1),
    (error: unknown) => (error as MagiAttnInputError).field === "n",
  );
  assert.throws(
    () => AttnMaskSpec.fromRanges({ qRanges: [], kRanges: [], maskTypes: [], totalSeqlenQ: largest + 1 }),
    (error: unknown) => (error as MagiAttnInputError).field === "totalSeqlenQ",
  );
  assert.throws(
    () =>
      toFlexKey({
        qRanges: Int32Array.of(0, 1),
        kRanges: Int32Array.of(0, 1),
        attnTypeMap: Int32Array.of(0),
        totalQ: 1,
        totalK: largest + 1,
      } as never),
    (error: unknown) => (error as MagiAttnInputError).field === "key.totalK",
  );
  // A key's area may pass 2^31 (it is a FLOP count, not an index): no error for a 2^31-token causal area.
  assert.ok(compileFlexKey(AttnMaskSpec.causal(1 << 17)).area > 2 ** 31);
});

Deno.test({
  // Device tensors run on the library that allocated them, even when it is not the default one.
  name: "device tensors of a libraryPath library work without repeating libraryPath",
  ignore: env.fakeLibrary === undefined,
  async fn() {
    const libraryPath = env.fakeLibrary!;
    const q = randomTensor([4, 2, 64], { seed: 51, dtype: "bfloat16" });
    const key = compileFlexKey(AttnMaskSpec.causal(4));
    using qd = toDevice(q, { libraryPath });
    const { out, lse } = await flexFlashAttnForward(qd, qd, qd, key);
    (out as Disposable)[Symbol.dispose]();
    (lse as Disposable)[Symbol.dispose]();
  },
});
