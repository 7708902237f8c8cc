/**
 * Host tensors: a flat typed array, a shape and a dtype. bf16 values are stored as their raw 16-bit
 * patterns in a `Uint16Array`, fp16 values in a `Float16Array`, fp32 values in a `Float32Array`.
 * @module
 */

import { describeValue, MagiAttnInputError } from "./errors.ts";
import { parseWith, z } from "./schema.ts";

/** Element types a host tensor may hold. The GPU path takes `float16` and `bfloat16`. */
export type DType = "float32" | "float16" | "bfloat16";

/** The typed array that backs each dtype. */
export type TensorData = Float32Array | Float16Array | Uint16Array;

/** A dense row-major tensor in host memory. */
export interface HostTensor {
  /** Row-major elements: `Float32Array` (float32), `Float16Array` (float16) or bf16 bit patterns. */
  readonly data: TensorData;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element type. */
  readonly dtype: DType;
}

const DTYPES: readonly DType[] = ["float32", "float16", "bfloat16"];

/** Product of the dimensions of `shape`. */
export function numel(shape: readonly number[]): number {
  let count = 1;
  for (const dim of shape) count *= dim;
  return count;
}

function expectedArrayName(dtype: DType): string {
  return dtype === "float32" ? "Float32Array" : dtype === "float16" ? "Float16Array" : "Uint16Array";
}

/** Host tensors hold fewer elements than this: the kernels index with int32, and so does every backend. */
export const MAX_TENSOR_ELEMENTS = 2 ** 31 - 1;

/**
 * Checks a shape (an array of non-negative safe-integer dimensions whose product is at most
 * {@linkcode MAX_TENSOR_ELEMENTS}) and returns its element count. Errors name the dimension
 * (`field[i]`) and say what it is: a bigint, NaN, a negative number, a string.
 */
export function checkShape(shape: unknown, field: string): number {
  if (!Array.isArray(shape)) {
    throw new MagiAttnInputError(
      field,
      `is ${describeValue(shape)}, not an array of dimensions`,
      "pass e.g. [8, 4, 64]",
    );
  }
  let count = 1;
  for (let axis = 0; axis < shape.length; axis++) {
    const dim: unknown = shape[axis];
    if (typeof dim !== "number" || !Number.isSafeInteger(dim) || dim < 0) {
      throw new MagiAttnInputError(
        `${field}[${axis}]`,
        `is ${describeValue(dim)}, not a non-negative integer`,
        typeof dim === "bigint"
          ? "give dimensions as numbers (convert with Number(...))"
          : "give non-negative integer dimensions",
      );
    }
    count *= dim;
  }
  if (count > MAX_TENSOR_ELEMENTS) {
    throw new MagiAttnInputError(
      field,
      `[${shape.join(", ")}] holds ${count} elements, more than ${MAX_TENSOR_ELEMENTS} (2^31 − 1)`,
      "use a smaller shape: the kernels index elements with int32",
    );
  }
  return count;
}

/** Whether `data` is the typed array that backs `dtype`. */
function dataMatches(data: unknown, dtype: DType): boolean {
  return dtype === "float32"
    ? data instanceof Float32Array
    : dtype === "float16"
    ? data instanceof Float16Array
    : data instanceof Uint16Array;
}

/**
 * Checks a host tensor, however it was built: `dtype` is known, `data` is the typed array of that dtype
 * (a `Float32Array` labelled `"bfloat16"` is refused, never reinterpreted) and holds exactly the shape's
 * element count. Errors name `field.data`, `field.dtype` or `field.shape`.
 */
export function checkHostTensor(value: unknown, field: string): asserts value is HostTensor {
  if (value === null || typeof value !== "object") {
    throw new MagiAttnInputError(
      field,
      `is ${describeValue(value)}, not a tensor`,
      "build it with tensor(data, shape, dtype) or randomTensor(shape)",
    );
  }
  const { data, shape, dtype } = value as { data?: unknown; shape?: unknown; dtype?: unknown };
  if (typeof dtype !== "string" || !DTYPES.includes(dtype as DType)) {
    throw new MagiAttnInputError(
      `${field}.dtype`,
      `is ${describeValue(dtype)}`,
      `use one of ${DTYPES.join(", ")}`,
    );
  }
  if (!dataMatches(data, dtype as DType)) {
    const what = ArrayBuffer.isView(data) ? `a ${data.constructor.name}` : describeValue(data);
    throw new MagiAttnInputError(
      `${field}.data`,
      `is ${what} but ${field}.dtype is ${dtype}, whose data is a ${expectedArrayName(dtype as DType)}` +
        (dtype === "bfloat16" ? " of bf16 bit patterns" : ""),
      `build the tensor with tensor(data, shape, dtype) or fromFloat32(values, shape, "${dtype}") so data ` +
        "and dtype agree",
    );
  }
  const count = checkShape(shape, `${field}.shape`);
  if ((data as TensorData).length !== count) {
    throw new MagiAttnInputError(
      `${field}.data`,
      `has ${(data as TensorData).length} elements but ${field}.shape [${(shape as number[]).join(", ")}] ` +
        `holds ${count}`,
      "make the data length equal the product of the shape",
    );
  }
}

/**
 * Wraps `data` as a tensor of `shape`. The dtype defaults to the one `data`'s array type implies
 * (`Uint16Array` means bf16 bits). Throws when the length does not match the shape or the array type does
 * not match the dtype.
 *
 * @example
 * ```ts
 * import { float32ToBf16, tensor } from "@magi/attn";
 *
 * const f32 = tensor(new Float32Array([1, 2, 3, 4, 5, 6]), [2, 3]); // dtype float32 from the array type
 * const bf16 = tensor(float32ToBf16([1, 2, 3, 4, 5, 6]), [2, 3]); // Uint16Array: bf16 bit patterns
 * ```
 */
export function tensor(data: TensorData, shape: readonly number[], dtype?: DType): HostTensor {
  const inferred: DType = data instanceof Float32Array
    ? "float32"
    : data instanceof Float16Array
    ? "float16"
    : data instanceof Uint16Array
    ? "bfloat16"
    : (() => {
      throw new MagiAttnInputError(
        "data",
        "must be a Float32Array, Float16Array or Uint16Array (bf16 bits)",
        "convert the values with Float32Array.from(...) or float32ToBf16(...)",
      );
    })();
  const resolved = dtype ?? inferred;
  if (!DTYPES.includes(resolved)) {
    throw new MagiAttnInputError(
      "dtype",
      `is ${JSON.stringify(resolved)}`,
      `use one of ${DTYPES.join(", ")}`,
    );
  }
  if (resolved !== inferred) {
    throw new MagiAttnInputError(
      "data",
      `is a ${data.constructor.name} but dtype is ${resolved}`,
      `pass a ${expectedArrayName(resolved)} for ${resolved}`,
    );
  }
  if (checkShape(shape, "shape") !== data.length) {
    throw new MagiAttnInputError(
      "shape",
      `[${shape.join(", ")}] holds ${numel(shape)} elements but data has ${data.length}`,
      "make the data length equal the product of the shape",
    );
  }
  return Object.freeze({ data, shape: Object.freeze([...shape]), dtype: resolved });
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** Rounds one float32 value to bf16 (round to nearest, ties to even) and returns its 16-bit pattern. */
export function float32ToBf16Bits(value: number): number {
  f32Scratch[0] = value;
  const bits = u32Scratch[0];
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) {
    return ((bits >>> 16) | 0x0040) & 0xffff; // keep NaN a (quiet) NaN
  }
  const rounding = 0x7fff + ((bits >>> 16) & 1);
  return ((bits + rounding) >>> 16) & 0xffff;
}

/** Expands a bf16 bit pattern to the float32 value it encodes (exactly). */
export function bf16BitsToFloat32(bits: number): number {
  u32Scratch[0] = (bits & 0xffff) << 16;
  return f32Scratch[0];
}

/**
 * Converts float values to bf16 bit patterns, rounding to nearest even.
 *
 * @example
 * ```ts
 * import { bf16ToFloat32, float32ToBf16 } from "@magi/attn";
 *
 * const bits = float32ToBf16([0.1, 1]); // Uint16Array [0x3dcd, 0x3f80]
 * const values = bf16ToFloat32(bits); // Float32Array [0.10009765625, 1]
 * ```
 */
export function float32ToBf16(values: ArrayLike<number>): Uint16Array {
  const out = new Uint16Array(values.length);
  for (let index = 0; index < values.length; index++) out[index] = float32ToBf16Bits(values[index]);
  return out;
}

/** Converts bf16 bit patterns to float32 values. */
export function bf16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let index = 0; index < bits.length; index++) outBits[index] = bits[index] << 16;
  return out;
}

/** The tensor's values as float32 (a copy for float16/bfloat16, the same array for float32). */
export function toFloat32(t: HostTensor): Float32Array {
  if (t.dtype === "float32") return t.data as Float32Array;
  if (t.dtype === "float16") return Float32Array.from(t.data as Float16Array);
  return bf16ToFloat32(t.data as Uint16Array);
}

/** The tensor's values as float64 (always a copy). */
export function toFloat64(t: HostTensor): Float64Array {
  return Float64Array.from(toFloat32(t));
}

/** Builds a tensor of `dtype` from float values, rounding to the dtype (nearest even). */
export function fromFloat32(
  values: ArrayLike<number>,
  shape: readonly number[],
  dtype: DType = "float32",
): HostTensor {
  if (dtype === "float32") return tensor(Float32Array.from(values), shape, dtype);
  if (dtype === "float16") return tensor(Float16Array.from(values), shape, dtype);
  return tensor(float32ToBf16(values), shape, dtype);
}

/** A small, fast, seedable pseudo-random generator (mulberry32); returns floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let mixed = state;
    mixed = Math.imul(mixed ^ (mixed >>> 15), mixed | 1);
    mixed ^= mixed + Math.imul(mixed ^ (mixed >>> 7), mixed | 61);
    return ((mixed ^ (mixed >>> 14)) >>> 0) / 4294967296;
  };
}

/** Options of {@linkcode randomTensor}. */
export interface RandomTensorOptions {
  /** Seed of the generator; the same seed gives the same tensor. Default 0. */
  seed?: number;
  /** Element type. Default `"float32"`. */
  dtype?: DType;
  /** Values are drawn from a standard normal distribution times `scale`. Default 1. */
  scale?: number;
}

const RANDOM_TENSOR_OPTIONS = z.strictObject({
  seed: z.number().optional(),
  dtype: z.enum(DTYPES).optional(),
  scale: z.number().optional(),
});

const RANDOM_TENSOR_WORDING = {
  field: "options",
  owner: "randomTensor",
  fix: "pass { seed, dtype, scale } or nothing",
  fixes: {
    seed: "give a finite number (the same seed gives the same tensor)",
    dtype: `use one of ${DTYPES.join(", ")}`,
    scale: "give a finite number (the standard deviation)",
  },
};

/**
 * A tensor of normally distributed values (Box-Muller over {@linkcode seededRandom}).
 *
 * @example
 * ```ts
 * import { randomTensor } from "@magi/attn";
 *
 * const q = randomTensor([8, 4, 64], { seed: 1, dtype: "bfloat16" }); // the same values for the same seed
 * ```
 */
export function randomTensor(shape: readonly number[], options: RandomTensorOptions = {}): HostTensor {
  const count = checkShape(shape, "shape");
  const { seed = 0, dtype = "float32", scale = 1 } = parseWith(
    RANDOM_TENSOR_OPTIONS,
    options,
    RANDOM_TENSOR_WORDING,
  );
  const next = seededRandom(seed);
  let values: Float32Array;
  try {
    values = new Float32Array(count);
  } catch (error) {
    throw new MagiAttnInputError(
      "shape",
      `[${shape.join(", ")}] needs ${4 * count} bytes of float32 values, which could not be allocated ` +
        `(${error instanceof Error ? error.message : String(error)})`,
      "use a smaller shape",
    );
  }
  for (let index = 0; index < values.length; index += 2) {
    const radius = Math.sqrt(-2 * Math.log(1 - next()));
    const angle = 2 * Math.PI * next();
    values[index] = radius * Math.cos(angle) * scale;
    if (index + 1 < values.length) values[index + 1] = radius * Math.sin(angle) * scale;
  }
  return fromFloat32(values, shape, dtype);
}
