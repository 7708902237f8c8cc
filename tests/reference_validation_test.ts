/**
 * The shared argument validation (`validateForwardArgs` / `validateBackwardArgs`) that every backend runs
 * first: resolved sizes and defaults, and bad inputs rejected naming the field and the fix.
 */

import assert from "node:assert/strict";
import { MagiAttnInputError } from "../lib/core/errors.ts";
import { referenceBackward, referenceForward } from "../lib/backends/reference.ts";
import { type HostTensor, randomTensor, tensor } from "../lib/core/tensor.ts";
import { type ShapedTensor, validateBackwardArgs, validateForwardArgs } from "../lib/core/validate.ts";
import { handMadeKey } from "./support/fixtures.ts";

const FULL = 0;
const CAUSAL = 1;

function shaped(shape: readonly number[], dtype: string = "float32"): ShapedTensor {
  return { shape, dtype };
}

Deno.test("validateForwardArgs resolves sizes and defaults", () => {
  const key = handMadeKey([[0, 6, 0, 9, CAUSAL]], 6, 9);
  const shape = validateForwardArgs(
    shaped([6, 4, 16], "bfloat16"),
    shaped([9, 2, 16], "bfloat16"),
    shaped([9, 2, 16], "bfloat16"),
    key,
    {},
  );
  assert.deepEqual(shape, {
    totalQ: 6,
    totalK: 9,
    numHeadsQ: 4,
    numHeadsKV: 2,
    headDim: 16,
    softmaxScale: 0.25,
    softcap: 0,
    dtype: "bfloat16",
  });
  const explicit = validateForwardArgs(shaped([6, 4, 16]), shaped([9, 4, 16]), shaped([9, 4, 16]), key, {
    softmaxScale: 0.5,
    softcap: 30,
  });
  assert.equal(explicit.softmaxScale, 0.5);
  assert.equal(explicit.softcap, 30);
});

Deno.test("bad inputs raise MagiAttnInputError naming the field and the fix, changing nothing", async (t) => {
  const key = handMadeKey([[0, 6, 0, 9, FULL]], 6, 9);
  const good = () => ({
    q: randomTensor([6, 4, 8], { seed: 1 }) as ShapedTensor,
    k: randomTensor([9, 2, 8], { seed: 2 }) as ShapedTensor,
    v: randomTensor([9, 2, 8], { seed: 3 }) as ShapedTensor,
    dout: randomTensor([6, 4, 8], { seed: 4 }) as ShapedTensor,
    out: randomTensor([6, 4, 8], { seed: 5 }) as ShapedTensor,
    lse: tensor(new Float32Array(24), [6, 4]) as ShapedTensor,
    key,
    opts: {} as { softmaxScale?: number; softcap?: number },
  });
  type Args = ReturnType<typeof good>;
  const hugeKey = handMadeKey([], 2 ** 20, 4);
  const cases: [string, string, (args: Args) => Partial<Args>, "forward" | "backward"][] = [
    ["q rank 2", "q.shape", () => ({ q: shaped([6, 32]) }), "forward"],
    ["k rank 4", "k.shape", () => ({ k: shaped([1, 9, 2, 8]) }), "forward"],
    ["v rank 2", "v.shape", () => ({ v: shaped([9, 16]) }), "forward"],
    ["negative dim", "q.shape", () => ({ q: shaped([6, -4, 8]) }), "forward"],
    ["unknown dtype", "q.dtype", () => ({ q: shaped([6, 4, 8], "int8") }), "forward"],
    ["k dtype differs", "k.dtype", () => ({ k: shaped([9, 2, 8], "bfloat16") }), "forward"],
    ["v dtype differs", "v.dtype", () => ({ v: shaped([9, 2, 8], "float16") }), "forward"],
    [
      "GQA ratio not an integer",
      "k.shape",
      () => ({ k: shaped([9, 3, 8]), v: shaped([9, 3, 8]) }),
      "forward",
    ],
    ["zero kv heads", "k.shape", () => ({ k: shaped([9, 0, 8]), v: shaped([9, 0, 8]) }), "forward"],
    ["zero head dim", "q.shape", () => ({ q: shaped([6, 4, 0]) }), "forward"],
    ["k head dim differs", "k.shape", () => ({ k: shaped([9, 2, 16]) }), "forward"],
    ["v head dim differs", "v.shape", () => ({ v: shaped([9, 2, 16]) }), "forward"],
    ["v tokens differ", "v.shape", () => ({ v: shaped([8, 2, 8]) }), "forward"],
    ["q tokens differ from the key", "q.shape", () => ({ q: shaped([7, 4, 8]) }), "forward"],
    [
      "k tokens differ from the key",
      "k.shape",
      () => ({ k: shaped([10, 2, 8]), v: shaped([10, 2, 8]) }),
      "forward",
    ],
    ["softmaxScale 0", "opts.softmaxScale", () => ({ opts: { softmaxScale: 0 } }), "forward"],
    ["softmaxScale negative", "opts.softmaxScale", () => ({ opts: { softmaxScale: -1 } }), "forward"],
    ["softmaxScale NaN", "opts.softmaxScale", () => ({ opts: { softmaxScale: NaN } }), "forward"],
    ["softmaxScale Infinity", "opts.softmaxScale", () => ({ opts: { softmaxScale: Infinity } }), "forward"],
    ["softcap negative", "opts.softcap", () => ({ opts: { softcap: -1 } }), "forward"],
    ["softcap NaN", "opts.softcap", () => ({ opts: { softcap: NaN } }), "forward"],
    ["softcap Infinity", "opts.softcap", () => ({ opts: { softcap: Infinity } }), "forward"],
    [
      "q holds 2^31 elements (int32 overflow)",
      "q.shape",
      () => ({ q: shaped([2 ** 20, 32, 64]), k: shaped([4, 1, 64]), v: shaped([4, 1, 64]), key: hugeKey }),
      "forward",
    ],
    [
      "key range out of bounds",
      "key.kRanges[0]",
      () => ({ key: { ...key, kRanges: Int32Array.from([0, 10]) } }),
      "forward",
    ],
    [
      "key range reversed",
      "key.qRanges[0]",
      () => ({ key: { ...key, qRanges: Int32Array.from([5, 2]) } }),
      "forward",
    ],
    [
      "key ranges of the wrong length",
      "key.qRanges",
      () => ({ key: { ...key, qRanges: Int32Array.from([0, 6, 0, 6]) } }),
      "forward",
    ],
    [
      "unknown slice type",
      "key.attnTypeMap[0]",
      () => ({ key: { ...key, attnTypeMap: Int32Array.from([4]) } }),
      "forward",
    ],
    ["dout shape differs", "dout.shape", () => ({ dout: shaped([6, 4, 4]) }), "backward"],
    ["dout dtype differs", "dout.dtype", () => ({ dout: shaped([6, 4, 8], "bfloat16") }), "backward"],
    ["out shape differs", "out.shape", () => ({ out: shaped([6, 2, 8]) }), "backward"],
    ["out dtype differs", "out.dtype", () => ({ out: shaped([6, 4, 8], "float16") }), "backward"],
    ["lse shape wrong", "lse.shape", () => ({ lse: shaped([4, 6]) }), "backward"],
    ["lse rank 3", "lse.shape", () => ({ lse: shaped([6, 4, 1]) }), "backward"],
    ["lse not float32", "lse.dtype", () => ({ lse: shaped([6, 4], "bfloat16") }), "backward"],
  ];
  for (const [name, field, change, pass] of cases) {
    await t.step(name, () => {
      const args: Args = { ...good(), ...change(good()) };
      const snapshot = structuredClone(args);
      const call = () =>
        pass === "forward"
          ? validateForwardArgs(args.q, args.k, args.v, args.key, args.opts)
          : validateBackwardArgs(args.dout, args.q, args.k, args.v, args.out, args.lse, args.key, args.opts);
      assert.throws(call, (error: unknown) => {
        assert.ok(error instanceof MagiAttnInputError, `expected MagiAttnInputError, got ${error}`);
        assert.equal(error.field, field, error.message);
        assert.match(error.message, /Fix: /);
        return true;
      });
      assert.deepEqual(args, snapshot, "validation must not change its inputs");
    });
  }
  await t.step("the GQA message says so", () => {
    const args = good();
    assert.throws(
      () => validateForwardArgs(args.q, shaped([9, 3, 8]), shaped([9, 3, 8]), key),
      /GQA ratio/,
    );
  });
  await t.step("the reference validates too, and refuses tensors without host data", () => {
    const args = good();
    assert.throws(
      () =>
        referenceForward(args.q as HostTensor, args.k as HostTensor, args.v as HostTensor, key, {
          softcap: -2,
        }),
      (error: unknown) => error instanceof MagiAttnInputError && error.field === "opts.softcap",
    );
    const deviceLike = { shape: [6, 4, 8], dtype: "float32" } as unknown as HostTensor;
    assert.throws(
      () => referenceForward(deviceLike, args.k as HostTensor, args.v as HostTensor, key),
      (error: unknown) => error instanceof MagiAttnInputError && error.field === "q",
    );
    assert.throws(
      () =>
        referenceBackward(
          args.dout as HostTensor,
          args.q as HostTensor,
          args.k as HostTensor,
          args.v as HostTensor,
          args.out as HostTensor,
          shaped([6, 4], "float16") as HostTensor,
          key,
        ),
      (error: unknown) => error instanceof MagiAttnInputError && error.field === "lse.dtype",
    );
  });
});
