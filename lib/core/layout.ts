/**
 * Layout conversions between the HF attention layout `[B, H, S, D]` and the kernels' thd layout.
 * @module
 */

import { MagiAttnInputError } from "./errors.ts";
import { type HostTensor, numel, tensor, type TensorData } from "./tensor.ts";

/** Same data, new shape (the element count must match). */
export function reshape(input: HostTensor, shape: readonly number[]): HostTensor {
  if (numel(shape) !== input.data.length) {
    throw new MagiAttnInputError(
      "shape",
      `[${shape.join(", ")}] does not hold the tensor's ${input.data.length} elements`,
      "keep the element count when reshaping",
    );
  }
  return tensor(input.data, shape, input.dtype);
}

/** `[B, H, S, D]` → `[B * S, H, D]` (a copy; each batch row's tokens stay contiguous). */
export function bhsdToThd(input: HostTensor, field: string): HostTensor {
  if (input.shape.length !== 4) {
    throw new MagiAttnInputError(
      `${field}.shape`,
      `is [${input.shape.join(", ")}], not [batch, heads, seqLen, headDim]`,
      "pass a rank-4 tensor in the [B, H, S, D] layout",
    );
  }
  const [batch, heads, seqLen, headDim] = input.shape;
  const source = input.data;
  const target = new (source.constructor as new (length: number) => TensorData)(source.length);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let s = 0; s < seqLen; s++) {
        const from = ((b * heads + h) * seqLen + s) * headDim;
        const to = ((b * seqLen + s) * heads + h) * headDim;
        target.set(source.subarray(from, from + headDim), to);
      }
    }
  }
  return tensor(target, [batch * seqLen, heads, headDim], input.dtype);
}
