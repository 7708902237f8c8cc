/**
 * The CUDA backend's checks beyond the shared validation: its options, whether the loaded library runs a
 * call's dtype and head dim, which library a call runs on, and preallocated outputs.
 * @module
 */

import { describeValue, MagiAttnInputError } from "../lib/core/errors.ts";
import { strictParser, z } from "../lib/core/schema.ts";
import type { HostTensor } from "../lib/core/tensor.ts";
import type { ForwardShape } from "../lib/core/validate.ts";
import { type DeviceTensor, isDeviceTensor } from "./device.ts";
import { MAGI_FFA_DTYPE } from "./ffi.ts";
import { type CudaLibrary, type LibraryOptions, loadCudaLibrary } from "./library.ts";

/** A host or device tensor. */
export type CudaInput = HostTensor | DeviceTensor;

/** What a library cannot run, as the error's field, its problem and its fix. */
interface SupportGap {
  field: "q.dtype" | "q.shape";
  problem: string;
  fix: string;
}

/**
 * Whether `library` runs this dtype and head dim (its `magi_ffa_supported_*` lists, read at load): the gap
 * when it does not, else undefined.
 */
function supportGap(dtype: string, headDim: number, library: CudaLibrary): SupportGap | undefined {
  const dtypeCode = (MAGI_FFA_DTYPE as Readonly<Record<string, number>>)[dtype];
  if (dtypeCode === undefined || !library.supportedDtypes.includes(dtypeCode)) {
    // Named bfloat16 first (the highest code), the usual training dtype.
    const names = Object.entries(MAGI_FFA_DTYPE).filter(([, code]) => library.supportedDtypes.includes(code))
      .sort((a, b) => b[1] - a[1]).map(([name]) => name);
    return {
      field: "q.dtype",
      problem: `is ${dtype}, which the CUDA backend does not run (it takes ${names.join(" and ")})`,
      fix: `cast q, k and v to ${names.join(" or ")}, or use backend "cpu"`,
    };
  }
  const headDims = library.supportedHeadDims;
  if (!headDims.includes(headDim)) {
    return {
      field: "q.shape",
      problem: `has head dim ${headDim}, which the CUDA backend does not run (it takes ${
        headDims.join(" and ")
      })`,
      fix: `use head dim ${headDims.join(" or ")}, or use backend "cpu"`,
    };
  }
  return undefined;
}

/**
 * Why the CUDA library found by `opts` cannot run inputs of this dtype and head dim (e.g. "`q.shape` has
 * head dim 96, which the CUDA backend does not run (it takes 64 and 128)"), or undefined when it can.
 * The library must load (ask after `probeCudaBackend` said it is available).
 */
export function cudaUnsupportedReason(
  dtype: string,
  headDim: number,
  opts: LibraryOptions = {},
): string | undefined {
  const gap = supportGap(dtype, headDim, loadCudaLibrary(opts));
  return gap && `\`${gap.field}\` ${gap.problem}`;
}

const kernelOptionShape = {
  softmaxScale: z.number().positive().optional(),
  softcap: z.number().min(0).optional(),
  deterministic: z.boolean().optional(),
  libraryPath: z.string().optional(),
  stream: z.custom<Deno.PointerValue>((value) => value === null || typeof value === "object", {
    error: (issue) => `is ${describeValue(issue.input)}, not a stream pointer`,
  }).optional(),
};

const deviceOutput = z.custom<DeviceTensor>((value) => isDeviceTensor(value), {
  error: (issue) => `is ${describeValue(issue.input)}, not a DeviceTensor`,
}).optional();

const KERNEL_FIXES = {
  softmaxScale: "pass a finite number > 0, or leave it out for 1/sqrt(headDim)",
  softcap: "pass a finite number ≥ 0 (0 turns soft-capping off)",
  deterministic: "pass true or false",
  libraryPath: "pass the path of libmagi_ffa.so as a string, or leave it out",
  stream: "pass a cudaStream_t pointer (Deno.PointerValue), or leave it out for the library's stream",
  outputs: "pass device tensors from emptyDevice(...) as { out, lse } or { dq, dk, dv }, or leave it out",
};

export const parseKernelOptions = strictParser(z.strictObject(kernelOptionShape), {
  field: "opts",
  owner: "bindForwardLaunch",
  fix: "pass an options object, or omit it",
  fixes: KERNEL_FIXES,
});

export const parseForwardOptions = strictParser(
  z.strictObject({
    ...kernelOptionShape,
    outputs: z.strictObject({ out: deviceOutput, lse: deviceOutput }).optional(),
  }),
  { field: "opts", owner: "cudaForward", fix: "pass an options object, or omit it", fixes: KERNEL_FIXES },
);

export const parseBackwardOptions = strictParser(
  z.strictObject({
    ...kernelOptionShape,
    outputs: z.strictObject({ dq: deviceOutput, dk: deviceOutput, dv: deviceOutput }).optional(),
  }),
  { field: "opts", owner: "cudaBackward", fix: "pass an options object, or omit it", fixes: KERNEL_FIXES },
);

/**
 * GPU-only restrictions, after the shared validation: the dtype and head dim must be ones the loaded
 * library is compiled for (its `magi_ffa_supported_*` lists, read at load).
 */
export function checkGpuSupport(shape: ForwardShape, library: CudaLibrary): number {
  const gap = supportGap(shape.dtype, shape.headDim, library);
  if (gap) throw new MagiAttnInputError(gap.field, gap.problem, gap.fix);
  return MAGI_FFA_DTYPE[shape.dtype as keyof typeof MAGI_FFA_DTYPE];
}

/** Refuses device tensors among `tensors` (named by `names`) that another library allocated. */
export function checkSameLibrary(
  tensors: readonly CudaInput[],
  names: readonly string[],
  library: CudaLibrary,
): void {
  for (let index = 0; index < tensors.length; index++) {
    const item = tensors[index];
    if (isDeviceTensor(item) && item.library !== library) {
      throw new MagiAttnInputError(
        names[index],
        `was allocated by ${item.library.path} but this call runs ${library.path}`,
        "use one CUDA library (one libraryPath) for all tensors of a call",
      );
    }
  }
}

/** Checks a preallocated output `name` (when given): this library's, of `shape` and `dtype`, not disposed. */
export function checkOutput(
  output: DeviceTensor | undefined,
  name: string,
  shape: readonly number[],
  dtype: string,
  library: CudaLibrary,
): void {
  if (output === undefined) return;
  if (!isDeviceTensor(output) || output.library !== library) {
    throw new MagiAttnInputError(
      `opts.outputs.${name}`,
      "is not a DeviceTensor of this call's library",
      "pass a tensor from emptyDevice(...) made with the same library, or leave it out",
    );
  }
  if (
    output.dtype !== dtype || output.shape.length !== shape.length ||
    output.shape.some((d, i) => d !== shape[i])
  ) {
    throw new MagiAttnInputError(
      `opts.outputs.${name}`,
      `is [${output.shape.join(", ")}] ${output.dtype} but must be [${shape.join(", ")}] ${dtype}`,
      `allocate it with emptyDevice([${shape.join(", ")}], "${dtype}")`,
    );
  }
  output.pointer; // throws if disposed, before any work is queued
}

/** The library a call runs on: the device inputs' unless `opts.libraryPath` names one. */
export function resolveLibrary(inputs: readonly CudaInput[], opts: LibraryOptions): CudaLibrary {
  for (const item of inputs) {
    if (isDeviceTensor(item)) return opts.libraryPath === undefined ? item.library : loadCudaLibrary(opts);
  }
  return loadCudaLibrary(opts);
}

/** Whether every input is a device tensor. */
export function allOnDevice(inputs: readonly CudaInput[]): boolean {
  for (const item of inputs) if (!isDeviceTensor(item)) return false;
  return true;
}

/** The error for `opts.outputs` given with host inputs. */
export function outputsNeedDeviceInputs(): MagiAttnInputError {
  return new MagiAttnInputError(
    "opts.outputs",
    "was given but some inputs are host tensors (host inputs give host outputs)",
    "upload every input with toDevice(...) first, or leave opts.outputs out",
  );
}
