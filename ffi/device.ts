/**
 * Tensors in GPU memory, and copies between them and host tensors.
 *
 * A {@linkcode DeviceTensor} owns one `magi_ffa_malloc` allocation, or a share of one (the outputs of one
 * kernel call are carved out of a single allocation, which is freed when the last of them is disposed).
 * Free it with `dispose()` (or a `using` declaration); a tensor that is collected without it is freed by a
 * `FinalizationRegistry` backstop, which runs late or never, so do not rely on it for GPU memory.
 *
 * Every copy is ordered on a stream: the library-owned one unless a `stream` option is given, the same
 * stream the CUDA backend runs its kernels on by default, so upload → kernel → download needs no extra
 * synchronization.
 * @module
 */

import { BackendUnavailableError, describeValue, MagiAttnInputError } from "../lib/core/errors.ts";
import { strictParser, z } from "../lib/core/schema.ts";
import {
  checkHostTensor,
  checkShape,
  type DType,
  type HostTensor,
  numel,
  tensor,
  type TensorData,
  toFloat32 as hostToFloat32,
} from "../lib/core/tensor.ts";
import {
  checkStatus,
  checkWorkerStatus,
  type CudaLibrary,
  type LibraryOptions,
  loadCudaLibrary,
  probeCudaBackend,
} from "./library.ts";

/** Options of the functions that touch device memory. */
export interface DeviceOptions extends LibraryOptions {
  /** `cudaStream_t` to order the work on; default: the library-owned stream. */
  stream?: Deno.PointerValue;
}

const BYTES_PER_ELEMENT: Readonly<Record<DType, number>> = Object.freeze({
  float32: 4,
  float16: 2,
  bfloat16: 2,
});

/** Only allocation functions of this module may construct a DeviceTensor. */
const constructorToken = Symbol("DeviceTensor constructor");

/**
 * One `magi_ffa_malloc` allocation and how many live tensors use it. The finalization backstop watches this
 * object (reachable from every tensor that uses it), so it frees the memory only once all are collected.
 */
class DeviceAllocation {
  constructor(readonly library: CudaLibrary, readonly address: bigint, public users: number) {
    library.leakedMemory.register(this, address, this);
  }

  /** One user is done; the last one frees the memory. */
  release(): void {
    if (--this.users > 0) return;
    this.library.leakedMemory.unregister(this);
    checkStatus(
      this.library,
      this.library.symbols.magi_ffa_free(Deno.UnsafePointer.create(this.address)),
      "magi_ffa_free",
    );
  }
}

/** A dense row-major tensor in GPU memory, owning its allocation until {@linkcode DeviceTensor.dispose}. */
export class DeviceTensor {
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element type: `float16`/`bfloat16` for q, k, v and their gradients, `float32` for lse. */
  readonly dtype: DType;
  /** Size of the allocation in bytes. */
  readonly byteLength: number;
  /**
   * The library that allocated it (and frees it).
   * @internal
   */
  readonly library: CudaLibrary;
  #pointer: Deno.PointerValue;
  #allocation: { release(): void } | null;
  #disposed = false;

  /** Not for direct use: create device tensors with {@linkcode toDevice} or {@linkcode emptyDevice}. */
  constructor(
    token: typeof constructorToken,
    library: CudaLibrary,
    pointer: Deno.PointerValue,
    shape: readonly number[],
    dtype: DType,
    allocation?: { release(): void },
  ) {
    if (token !== constructorToken) {
      throw new TypeError(
        "DeviceTensor cannot be constructed directly; use toDevice(...) or emptyDevice(...)",
      );
    }
    this.library = library;
    this.#pointer = pointer;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.byteLength = numel(shape) * BYTES_PER_ELEMENT[dtype];
    this.#allocation = pointer === null
      ? null
      : allocation ?? new DeviceAllocation(library, BigInt(Deno.UnsafePointer.value(pointer)), 1);
  }

  /** The device address (`null` for an empty tensor). Throws once the tensor is disposed. */
  get pointer(): Deno.PointerValue {
    if (this.#disposed) {
      throw new Error(
        `magi-attn: DeviceTensor [${
          this.shape.join(", ")
        }] ${this.dtype} used after dispose(). Fix: keep the ` +
          "tensor alive (do not dispose it or leave its `using` block) until the last call that reads it, or " +
          "copy it first with toHost(...).",
      );
    }
    return this.#pointer;
  }

  /** True once {@linkcode DeviceTensor.dispose} has run. */
  get disposed(): boolean {
    return this.#disposed;
  }

  /**
   * Frees the GPU memory now. Safe to call more than once. Pending GPU work that reads the tensor finishes
   * first (`cudaFree` waits for the device).
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#pointer = null;
    const allocation = this.#allocation;
    this.#allocation = null;
    allocation?.release();
  }

  /** Same as {@linkcode DeviceTensor.dispose}, for `using` declarations. */
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** True when `value` is a {@linkcode DeviceTensor} (disposed or not). */
export function isDeviceTensor(value: unknown): value is DeviceTensor {
  return value instanceof DeviceTensor;
}

function checkDType(dtype: unknown, field: string): asserts dtype is DType {
  if (typeof dtype !== "string" || !(dtype in BYTES_PER_ELEMENT)) {
    throw new MagiAttnInputError(field, `is ${describeValue(dtype)}`, "use float16, bfloat16 or float32");
  }
}

const pointerValue = z.custom<Deno.PointerValue>((value) => value === null || typeof value === "object", {
  error: (issue) => `is ${describeValue(issue.input)}, not a stream pointer`,
});

const DEVICE_FIXES = {
  libraryPath: "pass the path of libmagi_ffa.so as a string, or leave it out",
  stream: "pass a cudaStream_t pointer (Deno.PointerValue), or leave it out for the library's stream",
};

const parseDeviceOptions = strictParser(
  z.strictObject({ libraryPath: z.string().optional(), stream: pointerValue.optional() }),
  {
    field: "opts",
    owner: "the device functions",
    fix: "pass { libraryPath, stream } or nothing",
    fixes: DEVICE_FIXES,
  },
);

const parseLibraryOptions = strictParser(
  z.strictObject({ libraryPath: z.string().optional() }),
  { field: "opts", owner: "this function", fix: "pass { libraryPath } or nothing", fixes: DEVICE_FIXES },
);

/**
 * The library for device memory, and a check that it can run on this machine: a library that loads on a
 * machine without a driver or GPU gives the same {@linkcode BackendUnavailableError} as the rest of the
 * API (not a CUDA status from the first allocation).
 */
function deviceLibrary(opts: LibraryOptions): CudaLibrary {
  const library = loadCudaLibrary(opts);
  const probe = probeCudaBackend({ libraryPath: opts.libraryPath });
  if (!probe.available) {
    throw new BackendUnavailableError(
      `magi-attn: the CUDA backend is not available for device tensors: ${probe.reason}. Fix: run on a ` +
        "machine with an NVIDIA driver and a GPU of compute capability ≥ 8.0, or keep the tensors on the host " +
        '(backend "cpu" takes host tensors).',
    );
  }
  return library;
}

/** Checks the host tensors among `tensors` (named by `names`); device tensors are checked by their constructor. */
export function checkHostInputs(tensors: readonly unknown[], names: readonly string[]): void {
  for (let index = 0; index < tensors.length; index++) {
    if (!isDeviceTensor(tensors[index])) checkHostTensor(tensors[index], names[index]);
  }
}

/**
 * Allocates an uninitialised tensor with `library`, without validating the arguments (callers have).
 * For the CUDA backend's hot path; use {@linkcode emptyDevice} otherwise.
 */
export function allocateDevice(library: CudaLibrary, shape: readonly number[], dtype: DType): DeviceTensor {
  const bytes = numel(shape) * BYTES_PER_ELEMENT[dtype];
  if (bytes === 0) return new DeviceTensor(constructorToken, library, null, shape, dtype);
  allocationSlot[0] = 0n;
  checkStatus(
    library,
    library.symbols.magi_ffa_malloc(allocationSlot, BigInt(bytes)),
    `magi_ffa_malloc(${bytes} bytes)`,
  );
  return new DeviceTensor(
    constructorToken,
    library,
    Deno.UnsafePointer.create(allocationSlot[0]),
    shape,
    dtype,
  );
}

/** Alignment of each tensor inside a shared allocation (bytes; TMA and vector loads want 16, 256 is safe). */
const SHARE_ALIGN = 256;

/**
 * Allocates several uninitialised tensors with one `magi_ffa_malloc` (each 256-byte aligned), without
 * validating the arguments: the outputs of one kernel call (an allocation costs microseconds of host time
 * in the driver). Each tensor is disposed on its own; the memory is freed with the last one.
 */
export function allocateDeviceShared(
  library: CudaLibrary,
  specs: readonly (readonly [shape: readonly number[], dtype: DType])[],
): DeviceTensor[] {
  const offsets: number[] = [];
  let total = 0;
  for (const [shape, dtype] of specs) {
    offsets.push(total);
    total += Math.ceil((numel(shape) * BYTES_PER_ELEMENT[dtype]) / SHARE_ALIGN) * SHARE_ALIGN;
  }
  if (total === 0) {
    return specs.map(([shape, dtype]) => new DeviceTensor(constructorToken, library, null, shape, dtype));
  }
  allocationSlot[0] = 0n;
  checkStatus(
    library,
    library.symbols.magi_ffa_malloc(allocationSlot, BigInt(total)),
    `magi_ffa_malloc(${total} bytes)`,
  );
  const base = allocationSlot[0];
  const users = specs.filter(([shape]) => numel(shape) > 0).length;
  const allocation = new DeviceAllocation(library, base, users);
  return specs.map(([shape, dtype], index) =>
    numel(shape) === 0 ? new DeviceTensor(constructorToken, library, null, shape, dtype) : new DeviceTensor(
      constructorToken,
      library,
      Deno.UnsafePointer.create(base + BigInt(offsets[index])),
      shape,
      dtype,
      allocation,
    )
  );
}

/** Receives the address from magi_ffa_malloc; reused so an allocation costs no host garbage. */
const allocationSlot = new BigUint64Array(1);

/** Allocates an uninitialised device tensor of `shape` and `dtype`. */
export function emptyDevice(shape: readonly number[], dtype: DType, opts: LibraryOptions = {}): DeviceTensor {
  checkShape(shape, "shape");
  checkDType(dtype, "dtype");
  return allocateDevice(deviceLibrary(parseLibraryOptions(opts)), shape, dtype);
}

/**
 * Uploads a host tensor into a new device tensor (asynchronous on the stream; safe to reuse `host`).
 *
 * @example Keep tensors on the GPU between calls
 * ```ts
 * import { AttnMaskSpec, backendInfo, compileFlexKey, flexFlashAttnForward, randomTensor, toDevice, toHost } from "@magi/attn";
 *
 * if (backendInfo().backend === "cuda") {
 *   const key = compileFlexKey(AttnMaskSpec.causal(256));
 *   using q = toDevice(randomTensor([256, 4, 64], { seed: 1, dtype: "bfloat16" }));
 *   using kv = toDevice(randomTensor([256, 4, 64], { seed: 2, dtype: "bfloat16" }));
 *   const { out, lse } = await flexFlashAttnForward(q, kv, kv, key); // DeviceTensors, no copies
 *   const host = await toHost(out);
 *   out.dispose();
 *   lse.dispose();
 * }
 * ```
 */
export function toDevice(host: HostTensor, rawOptions: DeviceOptions = {}): DeviceTensor {
  checkHostTensor(host, "host");
  const opts = parseDeviceOptions(rawOptions);
  const library = deviceLibrary(opts);
  return uploadTo(library, host, opts.stream === undefined ? library.stream() : opts.stream);
}

/** Uploads `host` with `library` on `stream`, without validating it. For the CUDA backend. */
export function uploadTo(library: CudaLibrary, host: HostTensor, stream: Deno.PointerValue): DeviceTensor {
  const device = allocateDevice(library, host.shape, host.dtype);
  if (device.byteLength === 0) return device;
  try {
    // magi_ffa_memcpy_h2d takes pageable memory: it returns once the bytes are staged, so `host` may change
    // afterwards without affecting the copy.
    const data = host.data;
    checkStatus(
      library,
      library.symbols.magi_ffa_memcpy_h2d(device.pointer, data, BigInt(device.byteLength), stream),
      "magi_ffa_memcpy_h2d",
    );
  } catch (error) {
    device.dispose();
    throw error;
  }
  return device;
}

function hostArrayFor(dtype: DType, length: number): TensorData {
  if (dtype === "float32") return new Float32Array(length);
  if (dtype === "float16") return new Float16Array(length);
  return new Uint16Array(length);
}

/** True when `value` looks like a {@linkcode HostTensor} (a typed array with a shape), without checking sizes. */
function isHostTensorLike(value: unknown): value is HostTensor {
  const candidate = value as HostTensor | null;
  return typeof candidate === "object" && candidate !== null && ArrayBuffer.isView(candidate.data) &&
    Array.isArray(candidate.shape);
}

/**
 * Any tensor as a host tensor: a device tensor is downloaded into a new host tensor of the same shape and
 * dtype once the stream's earlier work (the kernels that wrote it) has finished; a host tensor is returned
 * as is (no copy), so code may call it on any result.
 *
 * @example
 * ```ts
 * import { randomTensor, toHost } from "@magi/attn";
 *
 * const host = randomTensor([8, 2, 64], { dtype: "bfloat16" });
 * const same = await toHost(host); // already on the host: returned as is
 * // With the CUDA library and a GPU, `await toHost(toDevice(host))` copies it there and back.
 * ```
 */
export async function toHost(
  input: HostTensor | DeviceTensor,
  rawOptions: DeviceOptions = {},
): Promise<HostTensor> {
  const opts = parseDeviceOptions(rawOptions);
  if (!isDeviceTensor(input)) {
    if (isHostTensorLike(input)) return input;
    throw new MagiAttnInputError(
      "input",
      "is neither a DeviceTensor nor a HostTensor",
      "pass a tensor made by tensor(...), toDevice(...) or an attention call",
    );
  }
  const stream = opts.stream === undefined ? input.library.stream() : opts.stream;
  return await downloadFrom(input, stream);
}

/**
 * A host tensor's values as float32: the same array for float32, a copy for float16 and bfloat16 (bf16 bit
 * patterns widened exactly).
 *
 * @example Reading a bf16 result
 * ```ts
 * import { float32ToBf16, tensor, toFloat32 } from "@magi/attn";
 *
 * const bits = float32ToBf16([1.5, -2, 0.1]); // Uint16Array of bf16 bit patterns
 * const values = toFloat32(tensor(bits, [3])); // Float32Array [1.5, -2, 0.10009765625]
 * ```
 */
export function toFloat32(input: HostTensor): Float32Array;
/** A device tensor's values as float32, downloaded once the kernels that wrote it have finished. */
export function toFloat32(input: DeviceTensor, opts?: DeviceOptions): Promise<Float32Array>;
/** Any tensor's values as float32: directly for a host tensor, after a download for a device tensor. */
export function toFloat32(
  input: HostTensor | DeviceTensor,
  opts?: DeviceOptions,
): Float32Array | Promise<Float32Array>;
export function toFloat32(
  input: HostTensor | DeviceTensor,
  opts: DeviceOptions = {},
): Float32Array | Promise<Float32Array> {
  if (isDeviceTensor(input)) return toHost(input, opts).then(hostToFloat32);
  return hostToFloat32(input);
}

/** Downloads `device` on `stream` and waits for it. For the CUDA backend. */
export async function downloadFrom(device: DeviceTensor, stream: Deno.PointerValue): Promise<HostTensor> {
  const pointer = device.pointer;
  const data = hostArrayFor(device.dtype, numel(device.shape));
  if (device.byteLength > 0) {
    const { symbols } = device.library;
    checkWorkerStatus(
      await symbols.magi_ffa_memcpy_d2h(data, pointer, BigInt(device.byteLength), stream),
      "magi_ffa_memcpy_d2h",
    );
    checkWorkerStatus(await symbols.magi_ffa_stream_synchronize(stream), "magi_ffa_stream_synchronize");
  }
  return tensor(data, device.shape, device.dtype);
}

/** Sets every byte of `device` to `byteValue` (0–255) on the stream; 0xFF turns fp16/bf16/fp32 into NaN. */
export function fillDeviceBytes(
  device: DeviceTensor,
  byteValue: number,
  rawOptions: DeviceOptions = {},
): void {
  const opts = parseDeviceOptions(rawOptions);
  if (!Number.isInteger(byteValue) || byteValue < 0 || byteValue > 255) {
    throw new MagiAttnInputError("byteValue", `is ${byteValue}`, "pass an integer byte value 0–255");
  }
  const pointer = device.pointer;
  if (device.byteLength === 0) return;
  const library = device.library;
  const stream = opts.stream === undefined ? library.stream() : opts.stream;
  checkStatus(
    library,
    library.symbols.magi_ffa_memset(pointer, byteValue, BigInt(device.byteLength), stream),
    "magi_ffa_memset",
  );
}

/**
 * Waits until all work queued on the stream has finished. Without a stream: the library-owned stream and
 * then the legacy default stream, where allocations and frees are ordered, so that memory freed by
 * `dispose()` is back in the driver's hands when this resolves.
 */
export async function synchronize(rawOptions: DeviceOptions = {}): Promise<void> {
  const opts = parseDeviceOptions(rawOptions);
  const library = deviceLibrary(opts);
  const streams = opts.stream === undefined ? [library.stream(), null] : [opts.stream];
  for (const stream of streams) {
    checkWorkerStatus(
      await library.symbols.magi_ffa_stream_synchronize(stream),
      "magi_ffa_stream_synchronize",
    );
  }
}

/** Free and total memory of the current GPU, in bytes. */
export function deviceMemoryInfo(opts: LibraryOptions = {}): { freeBytes: number; totalBytes: number } {
  const library = deviceLibrary(parseLibraryOptions(opts));
  const free = new BigUint64Array(1);
  const total = new BigUint64Array(1);
  checkStatus(library, library.symbols.magi_ffa_mem_info(free, total), "magi_ffa_mem_info");
  return { freeBytes: Number(free[0]), totalBytes: Number(total[0]) };
}
