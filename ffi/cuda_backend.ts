/**
 * The CUDA backend: flex flash attention forward and backward through `libmagi_ffa.so`.
 *
 * Inputs may be host tensors, device tensors, or a mix. When every input is a {@linkcode DeviceTensor} the
 * outputs are new device tensors (or the `outputs` given) and nothing is copied or synchronized: the
 * returned promise settles once the kernels are queued. Otherwise the host inputs are uploaded, the kernels
 * run, the outputs are downloaded after the stream has finished, every temporary is freed, and the outputs
 * are host tensors.
 *
 * Each flex key is uploaded once as a plan (`magi_ffa_plan_create`) and cached in a `WeakMap` keyed by the
 * key object, so the same compiled key reuses its plan across layers and steps. A plan whose key has been
 * collected is destroyed later, after the streams it ran on have been synchronized. The cache assumes a
 * key's arrays do not change after its first use (keys from `compileFlexKey` are never changed).
 * @module
 */

import { describeValue, MagiAttnInputError } from "../lib/core/errors.ts";
import { strictParser, z } from "../lib/core/schema.ts";
import type { HostTensor } from "../lib/core/tensor.ts";
import type { FlexKey } from "../lib/core/types.ts";
import {
  type ForwardShape,
  validateBackwardArgs,
  ValidatedCall,
  validateForwardArgs,
} from "../lib/core/validate.ts";
import {
  allocateDevice,
  allocateDeviceShared,
  checkHostInputs,
  type DeviceTensor,
  downloadFrom,
  isDeviceTensor,
  uploadTo,
} from "./device.ts";
import { MAGI_FFA_DTYPE } from "./ffi.ts";
import {
  checkStatus,
  checkWorkerStatus,
  type CudaLibrary,
  type LibraryOptions,
  loadCudaLibrary,
} from "./library.ts";

/** A host or device tensor. */
export type CudaInput = HostTensor | DeviceTensor;

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

/** Forward result: `out` like q and `lse` float32 `[totalQ, Hq]`. */
export interface CudaForwardResult<T extends CudaInput = CudaInput> {
  /** Attention output. */
  out: T;
  /** Natural-log sum of exponentials of each row's visible logits (−inf for empty rows). */
  lse: T;
}

/** Backward result: gradients with the shapes and dtypes of q, k and v. */
export interface CudaBackwardResult<T extends CudaInput = CudaInput> {
  /** Gradient of q. */
  dq: T;
  /** Gradient of k. */
  dk: T;
  /** Gradient of v. */
  dv: T;
}

/** One uploaded key, and the streams that used it (whose work must finish before it is destroyed). */
interface PlanEntry {
  readonly pointer: Deno.PointerValue;
  readonly streams: bigint[];
}

/** Per-library state of the backend. */
interface BackendState {
  readonly library: CudaLibrary;
  readonly plans: WeakMap<FlexKey, PlanEntry>;
  /** Plans whose keys were collected, waiting for their streams to be synchronized. */
  readonly retired: PlanEntry[];
  readonly planFinalizer: FinalizationRegistry<PlanEntry>;
}

/** Retired plans are destroyed in batches of this size (each batch costs a stream synchronization). */
const RETIRED_PLAN_BATCH = 16;

const states = new Map<CudaLibrary, BackendState>();
let lastState: BackendState | undefined;
const planSlot = new BigUint64Array(1);

function stateFor(library: CudaLibrary): BackendState {
  if (lastState !== undefined && lastState.library === library) return lastState;
  let state = states.get(library);
  if (state === undefined) {
    const retired: PlanEntry[] = [];
    state = {
      library,
      plans: new WeakMap(),
      retired,
      // The entry never references its key, so holding it here does not keep the key alive.
      planFinalizer: new FinalizationRegistry<PlanEntry>((entry) => retired.push(entry)),
    };
    states.set(library, state);
  }
  lastState = state;
  return state;
}

function planFor(state: BackendState, key: FlexKey, streamValue: bigint): Deno.PointerValue {
  const cached = state.plans.get(key);
  if (cached !== undefined) {
    if (!cached.streams.includes(streamValue)) cached.streams.push(streamValue);
    return cached.pointer;
  }
  const { library } = state;
  planSlot[0] = 0n;
  checkStatus(
    library,
    library.symbols.magi_ffa_plan_create(
      planSlot,
      key.qRanges,
      key.kRanges,
      key.attnTypeMap,
      key.attnTypeMap.length,
      key.totalQ,
      key.totalK,
    ),
    "magi_ffa_plan_create",
  );
  const entry: PlanEntry = { pointer: Deno.UnsafePointer.create(planSlot[0]), streams: [streamValue] };
  state.plans.set(key, entry);
  state.planFinalizer.register(key, entry);
  return entry.pointer;
}

/** Destroys retired plans once every stream that used them has finished its queued work. */
async function destroyRetiredPlans(state: BackendState): Promise<void> {
  const batch = state.retired.splice(0);
  const { symbols } = state.library;
  const streams = new Set<bigint>();
  for (const entry of batch) for (const stream of entry.streams) streams.add(stream);
  for (const stream of streams) {
    checkWorkerStatus(
      await symbols.magi_ffa_stream_synchronize(Deno.UnsafePointer.create(stream)),
      "magi_ffa_stream_synchronize",
    );
  }
  for (const entry of batch) {
    checkStatus(state.library, symbols.magi_ffa_plan_destroy(entry.pointer), "magi_ffa_plan_destroy");
  }
}

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

const parseKernelOptions = strictParser(z.strictObject(kernelOptionShape), {
  field: "opts",
  owner: "bindForwardLaunch",
  fix: "pass an options object, or omit it",
  fixes: KERNEL_FIXES,
});

const parseForwardOptions = strictParser(
  z.strictObject({
    ...kernelOptionShape,
    outputs: z.strictObject({ out: deviceOutput, lse: deviceOutput }).optional(),
  }),
  { field: "opts", owner: "cudaForward", fix: "pass an options object, or omit it", fixes: KERNEL_FIXES },
);

const parseBackwardOptions = strictParser(
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
function checkGpuSupport(shape: ForwardShape, library: CudaLibrary): number {
  const gap = supportGap(shape.dtype, shape.headDim, library);
  if (gap) throw new MagiAttnInputError(gap.field, gap.problem, gap.fix);
  return MAGI_FFA_DTYPE[shape.dtype as keyof typeof MAGI_FFA_DTYPE];
}

function checkSameLibrary(
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

function checkOutput(
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

function resolveLibrary(inputs: readonly CudaInput[], opts: LibraryOptions): CudaLibrary {
  for (const item of inputs) {
    if (isDeviceTensor(item)) return opts.libraryPath === undefined ? item.library : loadCudaLibrary(opts);
  }
  return loadCudaLibrary(opts);
}

function allOnDevice(inputs: readonly CudaInput[]): boolean {
  for (const item of inputs) if (!isDeviceTensor(item)) return false;
  return true;
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

/** Queues `magi_ffa_forward` on `pointers` = q, k, v, out, lse; returns the library's status. */
function queueForward(
  library: CudaLibrary,
  pointers: readonly Deno.PointerValue[],
  plan: Deno.PointerValue,
  shape: ForwardShape,
  dtypeCode: number,
  deterministic: number,
  stream: Deno.PointerValue,
): number {
  return library.symbols.magi_ffa_forward(
    pointers[0],
    pointers[1],
    pointers[2],
    pointers[3],
    pointers[4],
    plan,
    shape.numHeadsQ,
    shape.numHeadsKV,
    shape.headDim,
    dtypeCode,
    shape.softmaxScale,
    shape.softcap,
    deterministic,
    stream,
  );
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

/** The forward after validation; `inputs` are q, k and v. */
async function runForward(
  inputs: readonly CudaInput[],
  key: FlexKey,
  shape: ForwardShape,
  opts: CudaForwardOptions,
): Promise<CudaForwardResult> {
  const [q, k, v] = inputs;
  const library = resolveLibrary(inputs, opts);
  const dtypeCode = checkGpuSupport(shape, library);
  checkSameLibrary(inputs, ["q", "k", "v"], library);
  const state = stateFor(library);
  if (state.retired.length >= RETIRED_PLAN_BATCH) await destroyRetiredPlans(state);
  const stream = opts.stream === undefined ? library.stream() : opts.stream;
  const plan = planFor(state, key, Deno.UnsafePointer.value(stream));
  const lseShape = [shape.totalQ, shape.numHeadsQ];
  const deterministic = opts.deterministic ? 1 : 0;

  const launch = (
    qd: DeviceTensor,
    kd: DeviceTensor,
    vd: DeviceTensor,
    out: DeviceTensor,
    lse: DeviceTensor,
  ) => {
    const pointers = [qd.pointer, kd.pointer, vd.pointer, out.pointer, lse.pointer];
    const status = queueForward(library, pointers, plan, shape, dtypeCode, deterministic, stream);
    checkStatus(library, status, "magi_ffa_forward");
  };

  if (allOnDevice(inputs)) {
    const given = opts.outputs;
    checkOutput(given?.out, "out", q.shape, shape.dtype, library);
    checkOutput(given?.lse, "lse", lseShape, "float32", library);
    // Both outputs fresh: one allocation for the two (each allocation costs microseconds of host time in
    // the driver; lse is small, so keeping it alive with out costs little). Gradients stay separate: dq, dk
    // and dv are large and often freed at different times.
    const [freshOut, freshLse] = given?.out === undefined && given?.lse === undefined
      ? allocateDeviceShared(library, [[q.shape, shape.dtype], [lseShape, "float32"]])
      : [undefined, undefined];
    const out = given?.out ?? freshOut ?? allocateDevice(library, q.shape, shape.dtype);
    let lse: DeviceTensor | undefined;
    try {
      lse = given?.lse ?? freshLse ?? allocateDevice(library, lseShape, "float32");
      launch(q as DeviceTensor, k as DeviceTensor, v as DeviceTensor, out, lse);
    } catch (error) {
      if (given?.out === undefined) out.dispose();
      if (given?.lse === undefined) lse?.dispose();
      throw error;
    }
    return { out, lse };
  }
  if (opts.outputs !== undefined) throw outputsNeedDeviceInputs();
  const result = await withUploads(library, stream, inputs, async ([qd, kd, vd], temporaries) => {
    const out = allocateDevice(library, q.shape, shape.dtype);
    temporaries.push(out);
    const lse = allocateDevice(library, lseShape, "float32");
    temporaries.push(lse);
    launch(qd, kd, vd, out, lse);
    return { out: await downloadFrom(out, stream), lse: await downloadFrom(lse, stream) };
  });
  if (state.retired.length > 0) await destroyRetiredPlans(state);
  return result;
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
  const library = resolveLibrary(inputs, opts);
  const dtypeCode = checkGpuSupport(shape, library);
  checkSameLibrary(inputs, ["q", "k", "v"], library);
  checkOutput(outputs.out, "out", q.shape, shape.dtype, library);
  checkOutput(outputs.lse, "lse", [shape.totalQ, shape.numHeadsQ], "float32", library);
  const stream = opts.stream === undefined ? library.stream() : opts.stream;
  const plan = planFor(stateFor(library), key, Deno.UnsafePointer.value(stream));
  const pointers = [q.pointer, k.pointer, v.pointer, outputs.out.pointer, outputs.lse.pointer];
  const deterministic = opts.deterministic ? 1 : 0;
  return () => {
    const status = queueForward(library, pointers, plan, shape, dtypeCode, deterministic, stream);
    if (status !== 0) checkStatus(library, status, "magi_ffa_forward");
  };
}

function outputsNeedDeviceInputs(): MagiAttnInputError {
  return new MagiAttnInputError(
    "opts.outputs",
    "was given but some inputs are host tensors (host inputs give host outputs)",
    "upload every input with toDevice(...) first, or leave opts.outputs out",
  );
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

/** The backward after validation; `inputs` are dout, q, k, v, out and lse. */
async function runBackward(
  inputs: readonly CudaInput[],
  key: FlexKey,
  shape: ForwardShape,
  opts: CudaBackwardOptions,
): Promise<CudaBackwardResult> {
  const [, q, k, v] = inputs;
  const library = resolveLibrary(inputs, opts);
  const dtypeCode = checkGpuSupport(shape, library);
  checkSameLibrary(inputs, ["dout", "q", "k", "v", "out", "lse"], library);
  const state = stateFor(library);
  if (state.retired.length >= RETIRED_PLAN_BATCH) await destroyRetiredPlans(state);
  const stream = opts.stream === undefined ? library.stream() : opts.stream;
  const plan = planFor(state, key, Deno.UnsafePointer.value(stream));
  const deterministic = opts.deterministic ? 1 : 0;

  const launch = (devices: readonly DeviceTensor[], dq: DeviceTensor, dk: DeviceTensor, dv: DeviceTensor) => {
    const [doutD, qD, kD, vD, outD, lseD] = devices;
    checkStatus(
      library,
      library.symbols.magi_ffa_backward(
        doutD.pointer,
        qD.pointer,
        kD.pointer,
        vD.pointer,
        outD.pointer,
        lseD.pointer,
        dq.pointer,
        dk.pointer,
        dv.pointer,
        plan,
        shape.numHeadsQ,
        shape.numHeadsKV,
        shape.headDim,
        dtypeCode,
        shape.softmaxScale,
        shape.softcap,
        deterministic,
        stream,
      ),
      "magi_ffa_backward",
    );
  };

  if (allOnDevice(inputs)) {
    const given = opts.outputs;
    checkOutput(given?.dq, "dq", q.shape, shape.dtype, library);
    checkOutput(given?.dk, "dk", k.shape, shape.dtype, library);
    checkOutput(given?.dv, "dv", v.shape, shape.dtype, library);
    const allocated: DeviceTensor[] = [];
    const take = (provided: DeviceTensor | undefined, like: readonly number[]): DeviceTensor => {
      if (provided !== undefined) return provided;
      const fresh = allocateDevice(library, like, shape.dtype);
      allocated.push(fresh);
      return fresh;
    };
    try {
      const dq = take(given?.dq, q.shape);
      const dk = take(given?.dk, k.shape);
      const dv = take(given?.dv, v.shape);
      launch(inputs as DeviceTensor[], dq, dk, dv);
      return { dq, dk, dv };
    } catch (error) {
      for (const tensor of allocated) tensor.dispose();
      throw error;
    }
  }
  if (opts.outputs !== undefined) throw outputsNeedDeviceInputs();
  const result = await withUploads(library, stream, inputs, async (devices, temporaries) => {
    const dq = allocateDevice(library, q.shape, shape.dtype);
    temporaries.push(dq);
    const dk = allocateDevice(library, k.shape, shape.dtype);
    temporaries.push(dk);
    const dv = allocateDevice(library, v.shape, shape.dtype);
    temporaries.push(dv);
    launch(devices, dq, dk, dv);
    return {
      dq: await downloadFrom(dq, stream),
      dk: await downloadFrom(dk, stream),
      dv: await downloadFrom(dv, stream),
    };
  });
  if (state.retired.length > 0) await destroyRetiredPlans(state);
  return result;
}

/** Number of plans (uploaded keys) waiting to be destroyed, for tests and diagnostics. */
export function retiredPlanCount(library: CudaLibrary): number {
  return states.get(library)?.retired.length ?? 0;
}
