import assert from "node:assert/strict";
import { float32ToBf16, fromFloat32, MagiAttnInputError, randomTensor, tensor, toFloat32 } from "../mod.ts";
import { bf16BitsToFloat32, float32ToBf16Bits } from "../testing.ts";

/** bf16 rounding computed independently with BigInt-free float64 arithmetic on the exact value grid. */
function bf16RoundOracle(value: number): number {
  if (!Number.isFinite(value) || value === 0) return value;
  const f32 = Math.fround(value);
  const exponent = Math.floor(Math.log2(Math.abs(f32)));
  const step = 2 ** (Math.max(exponent, -126) - 7); // 8 significant bits (7 stored)
  const scaled = f32 / step;
  const floor = Math.floor(scaled);
  const fraction = scaled - floor;
  const rounded = fraction > 0.5 || (fraction === 0.5 && floor % 2 !== 0) ? floor + 1 : floor;
  return rounded * step;
}

Deno.test("bf16 conversion rounds to nearest even, keeps specials", () => {
  assert.equal(bf16BitsToFloat32(float32ToBf16Bits(1)), 1);
  assert.equal(float32ToBf16Bits(1), 0x3f80);
  // 1 + 2^-8 is exactly between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  assert.equal(bf16BitsToFloat32(float32ToBf16Bits(1 + 2 ** -8)), 1);
  assert.equal(bf16BitsToFloat32(float32ToBf16Bits(1 + 3 * 2 ** -8)), 1 + 2 ** -6);
  assert.ok(Number.isNaN(bf16BitsToFloat32(float32ToBf16Bits(NaN))));
  assert.equal(bf16BitsToFloat32(float32ToBf16Bits(Infinity)), Infinity);
  assert.equal(bf16BitsToFloat32(float32ToBf16Bits(-Infinity)), -Infinity);
  assert.ok(Object.is(bf16BitsToFloat32(float32ToBf16Bits(-0)), -0));
  const random = randomTensor([4096], { seed: 11, scale: 100 });
  const values = toFloat32(random);
  const bits = float32ToBf16(values);
  for (let index = 0; index < values.length; index++) {
    assert.equal(bf16BitsToFloat32(bits[index]), bf16RoundOracle(values[index]), `value ${values[index]}`);
  }
});

Deno.test("tensor() checks shape, dtype and data type; fromFloat32 rounds per dtype", () => {
  const t = tensor(new Float32Array(6), [2, 3]);
  assert.equal(t.dtype, "float32");
  assert.ok(Object.isFrozen(t) && Object.isFrozen(t.shape));
  assert.equal(tensor(new Uint16Array(2), [2]).dtype, "bfloat16");
  assert.equal(tensor(new Float16Array(2), [2]).dtype, "float16");
  for (
    const [call, field] of [
      [() => tensor(new Float32Array(5), [2, 3]), "shape"],
      [() => tensor(new Float32Array(6), [2, -3]), "shape[1]"],
      [() => tensor(new Float32Array(6), [6], "bfloat16"), "data"],
      [() => tensor(new Float64Array(6) as never, [6]), "data"],
      [() => tensor(new Float32Array(6), [6], "int8" as never), "dtype"],
    ] as const
  ) {
    assert.throws(call, (error: unknown) => error instanceof MagiAttnInputError && error.field === field);
  }
  const half = fromFloat32([1 / 3], [1], "float16");
  assert.equal(toFloat32(half)[0], Math.f16round(1 / 3));
  const brain = fromFloat32([1 / 3], [1], "bfloat16");
  assert.equal(toFloat32(brain)[0], bf16RoundOracle(1 / 3));
});

Deno.test("randomTensor is seeded and roughly standard normal", () => {
  const a = toFloat32(randomTensor([10000], { seed: 5 }));
  const b = toFloat32(randomTensor([10000], { seed: 5 }));
  const c = toFloat32(randomTensor([10000], { seed: 6 }));
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const mean = a.reduce((sum, value) => sum + value, 0) / a.length;
  const variance = a.reduce((sum, value) => sum + (value - mean) ** 2, 0) / a.length;
  assert.ok(Math.abs(mean) < 0.05 && Math.abs(variance - 1) < 0.05, `${mean} ${variance}`);
});
