/**
 * Flex flash attention entry points: pick a backend (CUDA library or CPU reference) and run the forward
 * or backward pass over a flex key.
 * @module
 */

import { BackendUnavailableError, MagiAttnInputError } from "../core/errors.ts";
import { isFlexKey, toFlexKey } from "../masks/flex_key.ts";
import { cpuBackward, cpuForward } from "./cpu/attention.ts";
import { noticeLargeCpuCall } from "./cpu/notice.ts";
import { checkBackwardMatchesForward, recordForward } from "./forward_record.ts";
import type { HostTensor } from "../core/tensor.ts";
import type { FlexKey, PlainFlexKey } from "../core/types.ts";
import {
  type ForwardShape,
  validateBackwardCall,
  type ValidatedCall,
  validateForwardCall,
} from "../core/validate.ts";
import { checkHostInputs, type DeviceTensor, isDeviceTensor } from "../../ffi/device.ts";
import {
  cudaBackwardValidated,
  cudaForwardValidated,
  cudaUnsupportedReason,
} from "../../ffi/cuda_backend.ts";
import { probeCudaBackend } from "../../ffi/library.ts";
import { parseBackendInfoOptions, parseFlexAttnOptions } from "./options.ts";

/** Which implementation runs the kernel: `"auto"` picks CUDA when it can run the call, else the CPU. */
export type Backend = "auto" | "cpu" | "cuda";

/** A tensor either in host memory or on the GPU. */
export type AnyTensor = HostTensor | DeviceTensor;

/** Options of {@linkcode flexFlashAttnForward} and {@linkcode flexFlashAttnBackward}. */
export interface FlexAttnOptions {
  /** Scale of the logits; default `1 / sqrt(headDim)`. */
  softmaxScale?: number;
  /** Logit soft-capping `cap * tanh(s / cap)`; 0 (default) disables it. */
  softcap?: number;
  /** Implementation to use; default `"auto"`. */
  backend?: Backend;
  /**
   * Bitwise-reproducible backward on the GPU (an atomic-free path, slower). Default false: dQ is summed in
   * fp32 by unordered adds (TMA reduce-adds on Hopper, atomics elsewhere), so its last bits may vary between
   * runs. The forward and the CPU reference are deterministic either way.
   */
  deterministic?: boolean;
  /** Path of the CUDA library, overriding `MAGI_FFA_LIBRARY` and the local build. */
  libraryPath?: string;
}

/** Forward result: `out` `[totalQ, Hq, D]` in q's dtype and `lse` float32 `[totalQ, Hq]`. */
export interface FlexAttnForwardResult<T extends AnyTensor = AnyTensor> {
  /** Attention output. */
  out: T;
  /** Natural-log sum of exponentials of each row's visible logits (−inf for empty rows). */
  lse: T;
}

/** Backward result: gradients with the shapes and dtypes of q, k and v. */
export interface FlexAttnBackwardResult<T extends AnyTensor = AnyTensor> {
  /** Gradient of q. */
  dq: T;
  /** Gradient of k. */
  dk: T;
  /** Gradient of v. */
  dv: T;
}

/** Which backend `"auto"` resolves to on this machine, and why. */
export interface BackendInfo {
  /** The backend `"auto"` uses for bf16/fp16 inputs with a supported head dim. */
  backend: "cuda" | "cpu";
  /**
   * One line for logs, e.g. "CUDA library not found: CPU reference; `deno task build` to build it" or
   * "CUDA on NVIDIA H200 (sm_90)".
   */
  summary: string;
  /** Why CUDA is not used, in full (every library path tried and what failed); absent when it is used. */
  reason?: string;
  /** GPU name, when CUDA is used. */
  device?: string;
  /** Path of the loaded CUDA library, when CUDA is used. */
  libraryPath?: string;
}

/**
 * Reports which backend `"auto"` resolves to. Without `--allow-ffi` the CPU is used (the reason says so);
 * every other reason comes from probing the CUDA library and the driver.
 *
 * @example
 * ```ts
 * import { backendInfo } from "@magi/attn";
 *
 * const info = backendInfo();
 * console.log(info.summary); // e.g. "CUDA library not found: CPU reference; `deno task build` to build it"
 * if (Deno.env.get("MAGI_ATTN_DEBUG")) console.log(info.reason ?? ""); // every path tried, and why
 * ```
 */
export function backendInfo(options: { libraryPath?: string } = {}): BackendInfo {
  const { libraryPath } = parseBackendInfoOptions(options);
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return {
      backend: "cpu",
      summary: "FFI permission not granted: CPU reference; run with --allow-ffi to use the GPU",
      reason: "FFI permission not granted (run with --allow-ffi to use the GPU)",
    };
  }
  const probe = probeCudaBackend({ libraryPath });
  if (!probe.available) {
    // The library did not load: building it is the fix. It loaded: the machine (driver, GPU) is the limit.
    const hint = probe.libraryPath === undefined ? "; `deno task build` to build it" : "";
    return { backend: "cpu", summary: `${probe.summary}: CPU reference${hint}`, reason: probe.reason };
  }
  const first = probe.devices?.[0];
  const device = first ? `${first.name} (sm_${first.major}${first.minor})` : undefined;
  return {
    backend: "cuda",
    summary: `CUDA on ${device ?? "GPU 0"}`,
    device,
    libraryPath: probe.libraryPath,
  };
}

function checkOptions(options: FlexAttnOptions): { backend: Backend; options: FlexAttnOptions } {
  const parsed = parseFlexAttnOptions(options);
  return { backend: parsed.backend ?? "auto", options: parsed };
}

/** Decides CPU or CUDA for one call; device-tensor inputs always need CUDA. */
function resolveBackend(
  requested: Backend,
  tensors: readonly AnyTensor[],
  shape: ForwardShape,
  options: FlexAttnOptions,
): "cpu" | "cuda" {
  const onDevice = tensors.some((item) => isDeviceTensor(item));
  if (requested === "cpu") {
    if (onDevice) {
      throw new MagiAttnInputError(
        "opts.backend",
        'is "cpu" but some inputs are DeviceTensors',
        'copy them to the host with toHost(...) or use backend "cuda"',
      );
    }
    return "cpu";
  }
  // Device tensors exist, so their library loaded and a device is there: they run on that library.
  if (onDevice) return "cuda";
  if (requested === "cuda") {
    const probe = probeCudaBackend({ libraryPath: options.libraryPath });
    if (!probe.available) {
      // probe.reason is a description without a fix, so this message has exactly one "Fix:".
      const fix = probe.libraryPath === undefined
        ? "build the library with `deno task build` (needs nvcc), point MAGI_FFA_LIBRARY or the libraryPath " +
          'option at a built libmagi_ffa.so, or use backend "cpu"'
        : 'run on a machine with an NVIDIA GPU of compute capability 8.0 or newer, or use backend "cpu"';
      throw new BackendUnavailableError(
        `magi-attn: backend "cuda" was requested but the CUDA backend is not available: ${probe.reason}\n` +
          `Fix: ${fix}.`,
      );
    }
    return "cuda";
  }
  // "auto": CUDA only where the loaded library runs this call exactly as asked (its dtypes and head dims).
  const { dtype, headDim } = shape;
  if (dtype === "float32" || backendInfo({ libraryPath: options.libraryPath }).backend === "cpu") {
    return "cpu";
  }
  return cudaUnsupportedReason(dtype, headDim, options) === undefined ? "cuda" : "cpu";
}

/** Why a call runs on the CPU rather than the GPU, for the once-per-process notice on large calls. */
function cpuReason(requested: Backend, dtype: string, headDim: number, options: FlexAttnOptions): string {
  if (requested === "cpu") return 'backend "cpu" was requested';
  if (dtype === "float32") return "the inputs are float32 (the CUDA kernels take bfloat16 and float16)";
  const info = backendInfo({ libraryPath: options.libraryPath });
  if (info.backend === "cpu") return info.reason ?? "the CUDA backend is not available";
  return cudaUnsupportedReason(dtype, headDim, options) ?? "the CUDA backend is not available";
}

/** A call after its options, key and tensors are checked, before a backend is chosen. */
interface CheckedCall {
  readonly requested: Backend;
  readonly options: FlexAttnOptions;
  readonly flexKey: FlexKey;
  readonly call: ValidatedCall;
  readonly shape: ForwardShape;
  /** The options every backend takes, with the validated scale and softcap. */
  readonly kernelOptions: Required<Pick<FlexAttnOptions, "softmaxScale" | "softcap" | "deterministic">> & {
    libraryPath?: string;
  };
}

/**
 * The checks a forward and a backward share: options, key (a plain key is compiled against q's and k's
 * lengths), the tensors (`validate`, on host and device tensors alike) and the host tensors' contents.
 */
function checkCall(
  inputs: readonly AnyTensor[],
  names: readonly string[],
  qk: readonly [AnyTensor, AnyTensor],
  key: FlexKey | PlainFlexKey,
  rawOptions: FlexAttnOptions,
  validate: (flexKey: FlexKey, options: FlexAttnOptions) => ValidatedCall,
): CheckedCall {
  const { backend: requested, options } = checkOptions(rawOptions);
  const flexKey = resolveKey(key, ...qk);
  const call = validate(flexKey, options);
  const shape = call.shape;
  checkHostInputs(inputs, names);
  const kernelOptions = {
    softmaxScale: shape.softmaxScale,
    softcap: shape.softcap,
    deterministic: options.deterministic ?? false,
    libraryPath: options.libraryPath,
  };
  return { requested, options, flexKey, call, shape, kernelOptions };
}

/** Says once per process when a large call runs on the CPU (`flopsPerArea`: its flops per masked cell and head dim). */
function noticeCpuCall(checked: CheckedCall, pass: "forward" | "backward", flopsPerArea: number): void {
  const { requested, shape, options } = checked;
  const flops = flopsPerArea * checked.flexKey.area * shape.numHeadsQ * shape.headDim;
  noticeLargeCpuCall(flops, pass, () => cpuReason(requested, shape.dtype, shape.headDim, options));
}

function resolveKey(key: FlexKey | PlainFlexKey, q: AnyTensor, k: AnyTensor): FlexKey {
  if (isFlexKey(key)) return key;
  for (const [field, item] of [["q", q], ["k", k]] as const) {
    if (!Array.isArray(item?.shape)) {
      throw new MagiAttnInputError(
        `${field}.shape`,
        "is missing",
        `pass ${field} as a HostTensor or DeviceTensor`,
      );
    }
  }
  return toFlexKey(key, { totalQ: q.shape[0], totalK: k.shape[0] });
}

/**
 * Flex flash attention forward over thd tensors: q `[totalQ, Hq, D]`, k and v `[totalK, Hkv, D]`.
 * Host tensors give host results (on the GPU when `"auto"` picks it: uploaded, run, downloaded).
 *
 * @example Two packed causal documents on host tensors
 * ```ts
 * import { AttnMaskSpec, compileFlexKey, flexFlashAttnForward, randomTensor, toFloat32 } from "@magi/attn";
 *
 * const key = compileFlexKey(AttnMaskSpec.varlen([5, 3]));
 * const q = randomTensor([8, 4, 64], { seed: 1, dtype: "bfloat16" }); // [tokens, heads, headDim]
 * const k = randomTensor([8, 2, 64], { seed: 2, dtype: "bfloat16" }); // GQA: 2 kv heads
 * const v = randomTensor([8, 2, 64], { seed: 3, dtype: "bfloat16" });
 * const { out, lse } = await flexFlashAttnForward(q, k, v, key, { softcap: 30 });
 * const values: Float32Array = toFloat32(out); // out: HostTensor [8, 4, 64] bf16; lse: float32 [8, 4]
 * ```
 */
export function flexFlashAttnForward(
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  key: FlexKey | PlainFlexKey,
  options?: FlexAttnOptions,
): Promise<FlexAttnForwardResult<HostTensor>>;
/** Flex flash attention forward on device tensors: device results, no copies. */
export function flexFlashAttnForward(
  q: DeviceTensor,
  k: DeviceTensor,
  v: DeviceTensor,
  key: FlexKey | PlainFlexKey,
  options?: FlexAttnOptions,
): Promise<FlexAttnForwardResult<DeviceTensor>>;
/**
 * Flex flash attention forward on tensors known only as {@linkcode AnyTensor}: device results when every
 * input is a DeviceTensor, else host results.
 */
export function flexFlashAttnForward(
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  key: FlexKey | PlainFlexKey,
  options?: FlexAttnOptions,
): Promise<FlexAttnForwardResult>;
export async function flexFlashAttnForward(
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  key: FlexKey | PlainFlexKey,
  rawOptions: FlexAttnOptions = {},
): Promise<FlexAttnForwardResult> {
  const inputs = [q, k, v] as const;
  const checked = checkCall(inputs, ["q", "k", "v"], [q, k], key, rawOptions, (flexKey, options) => {
    return validateForwardCall(inputs, flexKey, options);
  });
  const { flexKey, call, shape, kernelOptions } = checked;
  const backend = resolveBackend(checked.requested, inputs, shape, checked.options);
  // Validated above: the CUDA backend trusts this call instead of checking it again.
  let result;
  if (backend === "cuda") {
    result = await cudaForwardValidated(inputs, flexKey, call, kernelOptions);
  } else {
    noticeCpuCall(checked, "forward", 4);
    result = await cpuForward(q as HostTensor, k as HostTensor, v as HostTensor, flexKey, kernelOptions);
  }
  recordForward(result.lse, { softmaxScale: shape.softmaxScale, softcap: shape.softcap, key: flexKey });
  return result;
}

/**
 * Flex flash attention backward: gradients of q, k and v from `dout`, the forward's `out` and `lse`, on
 * host tensors (host gradients). Pass the forward's key and options: when `lse` is the one a forward of
 * this process returned, a different scale, softcap or key is refused instead of differentiating another
 * function.
 *
 * @example Gradients of a softcapped forward
 * ```ts
 * import { AttnMaskSpec, compileFlexKey, flexFlashAttnBackward, flexFlashAttnForward, randomTensor } from "@magi/attn";
 *
 * const key = compileFlexKey(AttnMaskSpec.causal(8));
 * const [q, k, v, dout] = [1, 2, 3, 4].map((seed) => randomTensor([8, 2, 64], { seed, dtype: "bfloat16" }));
 * const options = { softcap: 30 };
 * const { out, lse } = await flexFlashAttnForward(q, k, v, key, options);
 * const { dq, dk, dv } = await flexFlashAttnBackward(dout, q, k, v, out, lse, key, options);
 * ```
 */
export function flexFlashAttnBackward(
  dout: HostTensor,
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  out: HostTensor,
  lse: HostTensor,
  key: FlexKey | PlainFlexKey,
  options?: FlexAttnOptions,
): Promise<FlexAttnBackwardResult<HostTensor>>;
/** Flex flash attention backward on device tensors: device gradients, no copies. */
export function flexFlashAttnBackward(
  dout: DeviceTensor,
  q: DeviceTensor,
  k: DeviceTensor,
  v: DeviceTensor,
  out: DeviceTensor,
  lse: DeviceTensor,
  key: FlexKey | PlainFlexKey,
  options?: FlexAttnOptions,
): Promise<FlexAttnBackwardResult<DeviceTensor>>;
/**
 * Flex flash attention backward on tensors known only as {@linkcode AnyTensor}: device gradients when
 * every input is a DeviceTensor, else host gradients.
 */
export function flexFlashAttnBackward(
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
  key: FlexKey | PlainFlexKey,
  options?: FlexAttnOptions,
): Promise<FlexAttnBackwardResult>;
export async function flexFlashAttnBackward(
  dout: AnyTensor,
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  out: AnyTensor,
  lse: AnyTensor,
  key: FlexKey | PlainFlexKey,
  rawOptions: FlexAttnOptions = {},
): Promise<FlexAttnBackwardResult> {
  const inputs = [dout, q, k, v, out, lse] as const;
  const names = ["dout", "q", "k", "v", "out", "lse"];
  const checked = checkCall(inputs, names, [q, k], key, rawOptions, (flexKey, options) => {
    return validateBackwardCall(inputs, flexKey, options);
  });
  const { flexKey, call, shape, kernelOptions } = checked;
  checkBackwardMatchesForward(lse, {
    softmaxScale: shape.softmaxScale,
    softcap: shape.softcap,
    key: flexKey,
  });
  const backend = resolveBackend(checked.requested, inputs, shape, checked.options);
  if (backend === "cuda") return await cudaBackwardValidated(inputs, flexKey, call, kernelOptions);
  noticeCpuCall(checked, "backward", 10); // 2.5 × the forward's
  const host = inputs as readonly HostTensor[];
  return await cpuBackward(host[0], host[1], host[2], host[3], host[4], host[5], flexKey, kernelOptions);
}
