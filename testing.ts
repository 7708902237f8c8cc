/**
 * Helpers for tests and benchmarks of code built on magi-attn: seeded randomness, exact bf16 scalars,
 * float64 copies, dense masks of keys, the flex key cache's controls and the raw CUDA probe. None of these
 * is needed to run attention; the main entry point (`@magi/attn`) has everything a model calls.
 *
 * ```ts
 * import { AttnMaskSpec, compileFlexKey } from "@magi/attn";
 * import { denseMask, seededRandom } from "@magi/attn/testing";
 *
 * const next = seededRandom(7); // the same numbers on every run
 * const lengths = [1, 2, 3].map(() => 1 + Math.floor(next() * 8));
 * const mask = denseMask(compileFlexKey(AttnMaskSpec.varlen(lengths))); // 1 byte per (query, key) cell
 * ```
 * @module
 */

export { bf16BitsToFloat32, float32ToBf16Bits, numel, seededRandom, toFloat64 } from "./lib/core/tensor.ts";
export {
  clearFlexKeyCache,
  denseMask,
  FLEX_KEY_CACHE_CAPACITY,
  flexKeyCacheSize,
  sliceArea,
} from "./lib/masks/flex_key.ts";
export { type CudaDeviceInfo, type CudaProbe, probeCudaBackend } from "./ffi/library.ts";
