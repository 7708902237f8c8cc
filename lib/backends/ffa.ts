/**
 * Flex flash attention entry points: pick a backend (CUDA library or CPU reference) and run the forward
 * or backward pass over a flex key.
 * @module
 */

import { BackendUnavailableError, MagiAttnInputError } from "../core/errors.ts";
import { isFlexKey, toFlexKey } from "../masks/flex_key.ts";
import { referenceBackward, referenceForward } from "./reference.ts";
import type { HostTensor } from "../core/tensor.ts";
import type { FlexKey, PlainFlexKey } from "../core/types.ts";
import { validateBackwardArgs, validateForwardArgs } from "../core/validate.ts";
import { checkHostInputs, type DeviceTensor, isDeviceTensor } from "../../ffi/device.ts";
import { cudaBackwardValidated, cudaForwardValidated } from "../../ffi/cuda_backend.ts";
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
  /** Why CUDA is not used (absent when it is). */
  reason?: string;
  /** GPU name, when CUDA is used. */
  device?: string;
  /** Path of the loaded CUDA library, when CUDA is used. */
  libraryPath?: string;
}

const GPU_HEAD_DIMS: readonly number[] = [64, 128];

/**
 * Reports which backend `"auto"` resolves to. Without `--allow-ffi` the CPU is used (the reason says so);
 * every other reason comes from probing the CUDA library and the driver.
 */
export function backendInfo(options: { libraryPath?: string } = {}): BackendInfo {
  const { libraryPath } = parseBackendInfoOptions(options);
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    return { backend: "cpu", reason: "FFI permission not granted (run with --allow-ffi to use the GPU)" };
  }
  const probe = probeCudaBackend({ libraryPath });
  if (!probe.available) return { backend: "cpu", reason: probe.reason };
  const device = probe.devices?.[0];
  return {
    backend: "cuda",
    device: device ? `${device.name} (sm_${device.major}${device.minor})` : undefined,
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
  headDim: number,
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
      throw new BackendUnavailableError(
        `magi-attn: the CUDA backend is not available: ${probe.reason}. Fix: build the library with ` +
          `\`deno task build\` on a machine with nvcc, point MAGI_FFA_LIBRARY at it, or use backend "cpu".`,
      );
    }
    return "cuda";
  }
  // "auto": CUDA only where it can run this call exactly as asked (it takes bf16/fp16 and some head dims).
  const dtype = tensors[0].dtype;
  if (dtype === "float32" || !GPU_HEAD_DIMS.includes(headDim)) return "cpu";
  return backendInfo({ libraryPath: options.libraryPath }).backend;
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
 * Host tensors give host results; device tensors (all inputs) give device results without copies.
 */
export async function flexFlashAttnForward(
  q: AnyTensor,
  k: AnyTensor,
  v: AnyTensor,
  key: FlexKey | PlainFlexKey,
  rawOptions: FlexAttnOptions = {},
): Promise<FlexAttnForwardResult> {
  const { backend: requested, options } = checkOptions(rawOptions);
  const flexKey = resolveKey(key, q, k);
  const shape = validateForwardArgs(q, k, v, flexKey, options);
  checkHostInputs([q, k, v], ["q", "k", "v"]);
  const backend = resolveBackend(requested, [q, k, v], shape.headDim, options);
  const kernelOptions = {
    softmaxScale: shape.softmaxScale,
    softcap: shape.softcap,
    deterministic: options.deterministic ?? false,
    libraryPath: options.libraryPath,
  };
  // Validated above: the CUDA backend trusts this call instead of checking it again.
  if (backend === "cuda") return await cudaForwardValidated(q, k, v, flexKey, shape, kernelOptions);
  return referenceForward(q as HostTensor, k as HostTensor, v as HostTensor, flexKey, kernelOptions);
}

/**
 * Flex flash attention backward: gradients of q, k and v from `dout`, the forward's `out` and `lse`.
 * Accepts host or device tensors like {@linkcode flexFlashAttnForward}.
 */
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
  const { backend: requested, options } = checkOptions(rawOptions);
  const flexKey = resolveKey(key, q, k);
  const shape = validateBackwardArgs(dout, q, k, v, out, lse, flexKey, options);
  checkHostInputs([dout, q, k, v, out, lse], ["dout", "q", "k", "v", "out", "lse"]);
  const backend = resolveBackend(requested, [q, k, v, dout, out, lse], shape.headDim, options);
  const kernelOptions = {
    softmaxScale: shape.softmaxScale,
    softcap: shape.softcap,
    deterministic: options.deterministic ?? false,
    libraryPath: options.libraryPath,
  };
  if (backend === "cuda") {
    return await cudaBackwardValidated(dout, q, k, v, out, lse, flexKey, shape, kernelOptions);
  }
  return referenceBackward(
    dout as HostTensor,
    q as HostTensor,
    k as HostTensor,
    v as HostTensor,
    out as HostTensor,
    lse as HostTensor,
    flexKey,
    kernelOptions,
  );
}
