/**
 * The CUDA backend: flex flash attention forward and backward through `libmagi_ffa.so`.
 *
 * Inputs may be host tensors, device tensors, or a mix. When every input is a {@linkcode DeviceTensor} the
 * outputs are new device tensors (or the `outputs` given) and nothing is copied or synchronized: the
 * returned promise settles once the kernels are queued. Otherwise the host inputs are uploaded, the kernels
 * run, the outputs are downloaded after the stream has finished, every temporary is freed, and the outputs
 * are host tensors.
 *
 * Each flex key is uploaded once as a plan and cached (`plan_cache.ts`); the checks beyond the shared
 * validation are in `cuda_checks.ts`.
 * @module
 */

import type { DType, HostTensor } from "../lib/core/tensor.ts";
import type { FlexKey } from "../lib/core/types.ts";
import {
  type ForwardShape,
  validateBackwardArgs,
  ValidatedCall,
  validateForwardArgs,
} from "../lib/core/validate.ts";
import {
  allOnDevice,
  checkGpuSupport,
  checkOutput,
  checkSameLibrary,
  type CudaInput,
  outputsNeedDeviceInputs,
  parseBackwardOptions,
  parseForwardOptions,
  parseKernelOptions,
  resolveLibrary,
} from "./cuda_checks.ts";
import {
  allocateDevice,
  allocateDeviceShared,
  checkHostInputs,
  type DeviceTensor,
  downloadFrom,
  isDeviceTensor,
  uploadTo,
} from "./device.ts";
import { checkStatus, type CudaLibrary, type LibraryOptions } from "./library.ts";
import {
  type BackendState,
  destroyRetiredPlans,
  planFor,
  RETIRED_PLAN_BATCH,
  stateFor,
} from "./plan_cache.ts";

export type { CudaInput } from "./cuda_checks.ts";
export { cudaUnsupportedReason } from "./cuda_checks.ts";
export { retiredPlanCount } from "./plan_cache.ts";

/** Options of {@linkcode cudaForward} and {@linkcode cudaBackward}. */
export interface CudaKernelOptions extends LibraryOptions {
  /** Scale of the logits; default `1 / sqrt(headDim)`. */
  softmaxScale?: number;
  /** Logit soft-capping `cap * tanh(s / cap)`; 0 (default) disables it. */
  softcap?: number;
  /** Bitwise-reproducible results across runs (the backward's dk/dv accumulation order is fixed). */
  deterministic?: boolean;
  /** `cudaStream_t` to run on; default: the library-owned stream. */
  stream?: Deno.PointerValue;
}

/** Forward options: {@linkcode CudaKernelOptions} plus preallocated outputs. */
export interface CudaForwardOptions extends CudaKernelOptions {
  /**
   * Device tensors to write instead of allocating new ones (only when every input is a device tensor):
   * `out` like q, `lse` float32 `[totalQ, Hq]`. They are returned as the result.
   */
  outputs?: { out?: DeviceTensor; lse?: DeviceTensor };
}

/** Backward options: {@linkcode CudaKernelOptions} plus preallocated outputs. */
export interface CudaBackwardOptions extends CudaKernelOptions {
  /** Device tensors to write instead of allocating (every input on the device): dq like q, dk/dv like k/v. */
  outputs?: { dq?: DeviceTensor; dk?: DeviceTensor; dv?: DeviceTensor };
}

/**
 * Forward result: `out` like q and `lse` float32 `[totalQ, Hq]` (the fields are documented on the public
 * `FlexAttnForwardResult`).
 */
export type CudaForwardResult<T extends CudaInput = CudaInput> = { out: T; lse: T };

/** Backward result: gradients `dq`, `dk`, `dv` with the shapes and dtypes of q, k and v. */
export type CudaBackwardResult<T extends CudaInput = CudaInput> = { dq: T; dk: T; dv: T };

/** What one kernel call writes: its outputs' names, shapes and dtypes, in the C ABI's argument order. */
interface OutputSpec {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: DType;
}

/** The arguments every kernel entry takes after its tensor pointers (`magi_ffa.h`). */
type KernelTail = [
  plan: Deno.PointerValue,
  numHeadsQ: number,
  numHeadsKV: number,
  headDim: number,
  dtypeCode: number,
  softmaxScale: number,
  softcap: number,
  deterministic: number,
  stream: Deno.PointerValue,
];

/** Queues a kernel entry on `pointers` (the inputs, then the outputs); returns the library's status. */
type KernelEntry = (library: CudaLibrary, pointers: readonly Deno.PointerValue[], tail: KernelTail) => number;

/** `magi_ffa_forward` on q, k, v, out, lse. */
const forwardEntry: KernelEntry = (library, p, tail) =>
  library.symbols.magi_ffa_forward(p[0], p[1], p[2], p[3], p[4], ...tail);

/** `magi_ffa_backward` on dout, q, k, v, out, lse, dq, dk, dv. */
const backwardEntry: KernelEntry = (library, p, tail) =>
  library.symbols.magi_ffa_backward(p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], ...tail);

/** A call's library (checked to run its dtype and head dim and to own every device input). */
interface CheckedCall {
  readonly library: CudaLibrary;
  readonly state: BackendState;
  readonly dtypeCode: number;
}

/** Checks a validated call against the library it runs on. */
function checkCall(
  inputs: readonly CudaInput[],
  names: readonly string[],
  shape: ForwardShape,
  opts: CudaKernelOptions,
): CheckedCall {
  const library = resolveLibrary(inputs, opts);
  const dtypeCode = checkGpuSupport(shape, library);
  checkSameLibrary(inputs, names, library);
  return { library, state: stateFor(library), dtypeCode };
}

/** The stream of a checked call and the arguments after its kernel's tensor pointers (looking up the plan). */
function kernelTail(
  { library, state, dtypeCode }: CheckedCall,
  key: FlexKey,
  shape: ForwardShape,
  opts: CudaKernelOptions,
): { stream: Deno.PointerValue; tail: KernelTail } {
  const stream = opts.stream === undefined ? library.stream() : opts.stream;
  const plan = planFor(state, key, Deno.UnsafePointer.value(stream));
  const deterministic = opts.deterministic ? 1 : 0;
  const tail: KernelTail = [
    plan,
    shape.numHeadsQ,
    shape.numHeadsKV,
    shape.headDim,
    dtypeCode,
    shape.softmaxScale,
    shape.softcap,
    deterministic,
    stream,
  ];
  return { stream, tail };
}

/** Runs `body` with every host input uploaded, then frees the uploads. */
async function withUploads<T>(
  library: CudaLibrary,
  stream: Deno.PointerValue,
  inputs: readonly CudaInput[],
  body: (devices: DeviceTensor[], temporaries: DeviceTensor[]) => Promise<T>,
): Promise<T> {
  const temporaries: DeviceTensor[] = [];
  try {
    const devices = inputs.map((item) => {
      if (isDeviceTensor(item)) return item;
      const uploaded = uploadTo(library, item, stream);
      temporaries.push(uploaded);
      return uploaded;
    });
    return await body(devices, temporaries);
  } finally {
    // cudaFree is ordered after the queued work that reads these buffers, so freeing here is safe.
    for (const temporary of temporaries) temporary.dispose();
  }
}

/** One kernel call after validation: what runs, on what, and where its outputs go. */
interface KernelCall {
  readonly entry: KernelEntry;
  readonly symbol: string;
  readonly inputs: readonly CudaInput[];
  readonly names: readonly string[];
  readonly outputs: readonly OutputSpec[];
  /** Preallocated device outputs by name (`opts.outputs`). */
  readonly given: Readonly<Record<string, DeviceTensor | undefined>> | undefined;
  /**
   * Whether fresh outputs share one allocation when none is given (each allocation costs microseconds of
   * host time in the driver): the forward's out and its small lse do; the gradients, large and often freed
   * at different times, do not.
   */
  readonly shareFresh: boolean;
}

/**
 * Runs a validated call: on device inputs, queues the kernel into the given or fresh device outputs;
 * otherwise uploads the host inputs, runs, and downloads every output. Returns the outputs by name.
 */
async function runKernel(
  call: KernelCall,
  key: FlexKey,
  shape: ForwardShape,
  opts: CudaKernelOptions,
): Promise<Record<string, CudaInput>> {
  const { inputs, outputs, given } = call;
  const checked = checkCall(inputs, call.names, shape, opts);
  const { library, state } = checked;
  if (state.retired.length >= RETIRED_PLAN_BATCH) await destroyRetiredPlans(state);
  const { stream, tail } = kernelTail(checked, key, shape, opts);
  const launch = (devices: readonly DeviceTensor[], results: readonly DeviceTensor[]) => {
    const pointers = [...devices, ...results].map((tensor) => tensor.pointer);
    checkStatus(library, call.entry(library, pointers, tail), call.symbol);
  };

  if (allOnDevice(inputs)) {
    for (const spec of outputs) checkOutput(given?.[spec.name], spec.name, spec.shape, spec.dtype, library);
    const shared = call.shareFresh && outputs.every((spec) => given?.[spec.name] === undefined)
      ? allocateDeviceShared(library, outputs.map((spec) => [spec.shape, spec.dtype]))
      : [];
    const fresh: DeviceTensor[] = [];
    try {
      const results = outputs.map((spec, index) => {
        const provided = given?.[spec.name];
        if (provided !== undefined) return provided;
        const tensor = shared[index] ?? allocateDevice(library, spec.shape, spec.dtype);
        fresh.push(tensor);
        return tensor;
      });
      launch(inputs as DeviceTensor[], results);
      return Object.fromEntries(outputs.map((spec, index) => [spec.name, results[index]]));
    } catch (error) {
      for (const tensor of shared.length > 0 ? shared : fresh) tensor.dispose();
      throw error;
    }
  }
  if (given !== undefined) throw outputsNeedDeviceInputs();
  const result = await withUploads(library, stream, inputs, async (devices, temporaries) => {
    const results = outputs.map((spec) => {
      const tensor = allocateDevice(library, spec.shape, spec.dtype);
      temporaries.push(tensor);
      return tensor;
    });
    launch(devices, results);
    const downloaded: Record<string, CudaInput> = {};
    for (const [index, spec] of outputs.entries()) {
      downloaded[spec.name] = await downloadFrom(results[index], stream);
    }
    return downloaded;
  });
  if (state.retired.length > 0) await destroyRetiredPlans(state);
  return result;
}

/** The forward's outputs: out like q, lse float32 `[totalQ, Hq]`. */
function forwardOutputs(q: CudaInput, shape: ForwardShape): OutputSpec[] {
  return [
    { name: "out", shape: q.shape, dtype: shape.dtype },
    { name: "lse", shape: [shape.totalQ, shape.numHeadsQ], dtype: "float32" },
  ];
}

/** The backward's outputs: dq, dk and dv like q, k and v. */
function backwardOutputs(q: CudaInput, k: CudaInput, v: CudaInput, shape: ForwardShape): OutputSpec[] {
  return [
    { name: "dq", shape: q.shape, dtype: shape.dtype },
    { name: "dk", shape: k.shape, dtype: shape.dtype },
    { name: "dv", shape: v.shape, dtype: shape.dtype },
  ];
}

const FORWARD_NAMES = ["q", "k", "v"];
const BACKWARD_NAMES = ["dout", "q", "k", "v", "out", "lse"];

/** The forward after validation; `inputs` are q, k and v. */
async function runForward(
  inputs: readonly CudaInput[],
  key: FlexKey,
  shape: ForwardShape,
  opts: CudaForwardOptions,
): Promise<CudaForwardResult> {
  const outputs = forwardOutputs(inputs[0], shape);
  const call = { entry: forwardEntry, symbol: "magi_ffa_forward", names: FORWARD_NAMES, shareFresh: true };
  const { out, lse } = await runKernel({ ...call, inputs, outputs, given: opts.outputs }, key, shape, opts);
  return { out, lse };
}

/** The backward after validation; `inputs` are dout, q, k, v, out and lse. */
async function runBackward(
  inputs: readonly CudaInput[],
  key: FlexKey,
  shape: ForwardShape,
  opts: CudaBackwardOptions,
): Promise<CudaBackwardResult> {
  const outputs = backwardOutputs(inputs[1], inputs[2], inputs[3], shape);
  const call = {
    entry: backwardEntry,
    symbol: "magi_ffa_backward",
    names: BACKWARD_NAMES,
    shareFresh: false,
  };
  const { dq, dk, dv } = await runKernel({ ...call, inputs, outputs, given: opts.outputs }, key, shape, opts);
  return { dq, dk, dv };
}

/** Flex flash attention forward on the GPU; device inputs give device outputs without copies. */
export function cudaForward(
  q: DeviceTensor,
  k: DeviceTensor,
  v: DeviceTensor,
  key: FlexKey,
  opts?: CudaForwardOptions,
): Promise<CudaForwardResult<DeviceTensor>>;
/** Flex flash attention forward on the GPU; host inputs give host outputs. */
export function cudaForward(
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  key: FlexKey,
  opts?: CudaForwardOptions,
): Promise<CudaForwardResult<HostTensor>>;
/** Flex flash attention forward on the GPU; outputs are device tensors only if every input is one. */
export function cudaForward(
  q: CudaInput,
  k: CudaInput,
  v: CudaInput,
  key: FlexKey,
  opts?: CudaForwardOptions,
): Promise<CudaForwardResult>;
export async function cudaForward(
  q: CudaInput,
  k: CudaInput,
  v: CudaInput,
  key: FlexKey,
  rawOptions: CudaForwardOptions = {},
): Promise<CudaForwardResult> {
  const opts = parseForwardOptions(rawOptions);
  const shape = validateForwardArgs(q, k, v, key, opts);
  checkHostInputs([q, k, v], ["q", "k", "v"]);
  return await runForward([q, k, v], key, shape, opts);
}

/**
 * Internal (for `lib/backends/ffa.ts`, which has validated the call): {@linkcode cudaForward} of
 * `inputs` = q, k, v without validating again. `call` must be what `validateForwardCall(q, k, v, key, …)`
 * returned for these very objects; anything else is validated in full, so a direct caller cannot skip
 * the checks.
 */
export async function cudaForwardValidated(
  inputs: readonly [CudaInput, CudaInput, CudaInput],
  key: FlexKey,
  call: ValidatedCall,
  opts: CudaKernelOptions,
): Promise<CudaForwardResult> {
  if (!ValidatedCall.covers(call, [...inputs, key])) return await cudaForward(...inputs, key, opts);
  return await runForward(inputs, key, call.shape, opts);
}

/**
 * A forward call bound once to device tensors, a key and options, for measuring the floor of a call's
 * host cost (the benchmark's "raw FFI" figure): the arguments are validated and the key's plan is looked
 * up (or uploaded) here, once; each call of the returned function only queues `magi_ffa_forward` on the
 * stream. The tensors must stay alive and unchanged in shape while the function is used.
 */
export function bindForwardLaunch(
  q: DeviceTensor,
  k: DeviceTensor,
  v: DeviceTensor,
  key: FlexKey,
  outputs: { out: DeviceTensor; lse: DeviceTensor },
  rawOptions: CudaKernelOptions = {},
): () => void {
  const opts = parseKernelOptions(rawOptions);
  const shape = validateForwardArgs(q, k, v, key, opts);
  const inputs = [q, k, v];
  if (!allOnDevice(inputs)) throw outputsNeedDeviceInputs();
  const checked = checkCall(inputs, FORWARD_NAMES, shape, opts);
  const { library } = checked;
  for (const spec of forwardOutputs(q, shape)) {
    checkOutput(outputs[spec.name as "out" | "lse"], spec.name, spec.shape, spec.dtype, library);
  }
  const { tail } = kernelTail(checked, key, shape, opts);
  const pointers = [q.pointer, k.pointer, v.pointer, outputs.out.pointer, outputs.lse.pointer];
  return () => {
    const status = forwardEntry(library, pointers, tail);
    if (status !== 0) checkStatus(library, status, "magi_ffa_forward");
  };
}

/** Flex flash attention backward on the GPU; device inputs give device gradients without copies. */
export function cudaBackward(
  dout: DeviceTensor,
  q: DeviceTensor,
  k: DeviceTensor,
  v: DeviceTensor,
  out: DeviceTensor,
  lse: DeviceTensor,
  key: FlexKey,
  opts?: CudaBackwardOptions,
): Promise<CudaBackwardResult<DeviceTensor>>;
/** Flex flash attention backward on the GPU; host inputs give host gradients. */
export function cudaBackward(
  dout: HostTensor,
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  out: HostTensor,
  lse: HostTensor,
  key: FlexKey,
  opts?: CudaBackwardOptions,
): Promise<CudaBackwardResult<HostTensor>>;
/** Flex flash attention backward on the GPU; gradients are device tensors only if every input is one. */
export function cudaBackward(
  dout: CudaInput,
  q: CudaInput,
  k: CudaInput,
  v: CudaInput,
  out: CudaInput,
  lse: CudaInput,
  key: FlexKey,
  opts?: CudaBackwardOptions,
): Promise<CudaBackwardResult>;
export async function cudaBackward(
  dout: CudaInput,
  q: CudaInput,
  k: CudaInput,
  v: CudaInput,
  out: CudaInput,
  lse: CudaInput,
  key: FlexKey,
  rawOptions: CudaBackwardOptions = {},
): Promise<CudaBackwardResult> {
  const opts = parseBackwardOptions(rawOptions);
  const shape = validateBackwardArgs(dout, q, k, v, out, lse, key, opts);
  checkHostInputs([dout, q, k, v, out, lse], ["dout", "q", "k", "v", "out", "lse"]);
  return await runBackward([dout, q, k, v, out, lse], key, shape, opts);
}

/**
 * Internal (for `lib/backends/ffa.ts`): {@linkcode cudaBackward} of `inputs` = dout, q, k, v, out, lse,
 * trusting a `call` that `validateBackwardCall` returned for these very objects (anything else is
 * validated in full).
 */
export async function cudaBackwardValidated(
  inputs: readonly [CudaInput, CudaInput, CudaInput, CudaInput, CudaInput, CudaInput],
  key: FlexKey,
  call: ValidatedCall,
  opts: CudaKernelOptions,
): Promise<CudaBackwardResult> {
  if (!ValidatedCall.covers(call, [...inputs, key])) return await cudaBackward(...inputs, key, opts);
  return await runBackward(inputs, key, call.shape, opts);
}
