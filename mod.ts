/**
 * magi-attn: arbitrary attention masks (packed documents, sliding windows, prefix trees of RL rollouts,
 * raw ranges) compiled to a flex key and run by flex flash attention: our CUDA library on NVIDIA GPUs
 * through `Deno.dlopen`, or the CPU reference.
 *
 * ```ts
 * import { AttnMaskSpec, compileFlexKey, flexFlashAttnForward, randomTensor } from "@magi/attn";
 *
 * const spec = AttnMaskSpec.varlen([5, 3]); // two causal documents packed into 8 tokens
 * const q = randomTensor([8, 2, 16], { seed: 1 });
 * const k = randomTensor([8, 2, 16], { seed: 2 });
 * const v = randomTensor([8, 2, 16], { seed: 3 });
 * const { out, lse } = await flexFlashAttnForward(q, k, v, compileFlexKey(spec));
 * ```
 * @module
 */

export { BackendUnavailableError, MagiAttnInputError } from "./lib/core/errors.ts";
export {
  bf16ToFloat32,
  type DType,
  float32ToBf16,
  fromFloat32,
  type HostTensor,
  randomTensor,
  type RandomTensorOptions,
  tensor,
  type TensorData,
} from "./lib/core/tensor.ts";
export {
  AttnType,
  type AttnTypeValue,
  type FlexKey,
  type MaskType,
  type PlainFlexKey,
} from "./lib/core/types.ts";
export {
  type AttnMaskRanges,
  AttnMaskSpec,
  type Range,
  type SlidingWindowOptions,
  type VarlenOptions,
} from "./lib/masks/spec.ts";
export { type PrefixTreeLayout, prefixTreeLayout } from "./lib/masks/prefix_tree.ts";
export { compileFlexKey, isFlexKey, toFlexKey } from "./lib/masks/flex_key.ts";
export {
  type AnyTensor,
  type Backend,
  type BackendInfo,
  backendInfo,
  type FlexAttnBackwardResult,
  type FlexAttnForwardResult,
  type FlexAttnOptions,
  flexFlashAttnBackward,
  flexFlashAttnForward,
} from "./lib/backends/ffa.ts";
export {
  type AttentionFunction,
  type AttentionMask,
  type AttentionOptions,
  type BoolAttentionMask,
} from "./lib/attention/attention_types.ts";
export { type MaskSvgOptions, maskToSvg } from "./lib/masks/svg.ts";
export {
  ALL_ATTENTION_FUNCTIONS,
  AttentionInterface,
  sdpaAttentionForward,
} from "./lib/attention/registry.ts";
export {
  getActiveAttnSpec,
  magiAttentionForward,
  type MagiAttnCallOptions,
  type MagiAttnFunc,
  makeMagiAttnFunc,
  setActiveAttnSpec,
} from "./lib/attention/magi.ts";
export {
  AttnSpecNotConsumedError,
  closeAttnSpecStep,
  findAttentionModules,
  type ModelLike,
  resetAttnSpecGuard,
  setAttnSpecOnAttention,
  type StampOptions,
} from "./lib/attention/stamping.ts";
export {
  deviceMemoryInfo,
  type DeviceOptions,
  DeviceTensor,
  emptyDevice,
  isDeviceTensor,
  synchronize,
  toDevice,
  toFloat32,
  toHost,
} from "./ffi/device.ts";
export { type LibraryOptions, MagiFfaError } from "./ffi/library.ts";
