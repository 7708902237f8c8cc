/**
 * Finding, loading and probing the CUDA library `libmagi_ffa.so`, and turning its failure statuses into
 * exceptions.
 *
 * Where the library is looked for:
 * 1. the `libraryPath` option, else
 * 2. the `MAGI_FFA_LIBRARY` environment variable, else
 * 3. the local build `<package root>/build/libmagi_ffa.so` (`deno task build`; only when this module is
 *    loaded from a `file:` URL), then the per-user cache
 *    `$XDG_CACHE_HOME/magi-attn/<version>/libmagi_ffa.so` (or `~/.cache/magi-attn/<version>/...`).
 *
 * An explicit choice (1 or 2) is the only path tried: silently loading another build when the named one
 * is broken would hide the misconfiguration. Otherwise the candidates of 3 are tried in order.
 *
 * Permissions: loading needs `--allow-ffi`. Without a `libraryPath` option the lookup reads
 * `MAGI_FFA_LIBRARY` and, when the local build is absent, `XDG_CACHE_HOME` and `HOME`, so it needs
 * `--allow-env` for those. A missing permission is rethrown as the `Deno.errors.NotCapable` Deno raised,
 * never turned into "library not found": the fix is a flag, not a build.
 * @module
 */

import denoConfig from "../deno.json" with { type: "json" };
import { BackendUnavailableError, MagiAttnInputError } from "../lib/core/errors.ts";
import { unknownOptionFix } from "../lib/core/names.ts";
import {
  MAGI_FFA_ABI_VERSION,
  MAGI_FFA_ERROR,
  type MagiFfaLibrary,
  openAbiProbe,
  openMagiFfa,
} from "./ffi.ts";

/** File name of the built library. */
export const LIBRARY_FILE_NAME = "libmagi_ffa.so";

/** The package version the per-user cache directory is named after (from `deno.json`). */
export const PACKAGE_VERSION: string = denoConfig.version;

/** Options shared by everything that loads the library. */
export interface LibraryOptions {
  /** Path of `libmagi_ffa.so`; when given, no other path is tried and no environment is read. */
  libraryPath?: string;
}

/** One place the library may be, and what pointed there. */
export interface LibraryCandidate {
  /** Absolute (or caller-given) path of the file. */
  readonly path: string;
  /** What produced the path, for error messages. */
  readonly source: "option libraryPath" | "env MAGI_FFA_LIBRARY" | "local build" | "user cache";
}

/** A loaded, ABI-checked library and the per-process state that belongs to it. */
export interface CudaLibrary {
  /** The path it was loaded from. */
  readonly path: string;
  /** The library's functions, typed by the symbol table of `ffi/ffi.ts`. */
  readonly symbols: MagiFfaLibrary["symbols"];
  /** `magi_ffa_abi_version()` of the loaded file. */
  readonly abiVersion: number;
  /** Head dims the kernels are compiled for (`magi_ffa_supported_head_dims`), ascending; read at load. */
  readonly supportedHeadDims: readonly number[];
  /** `MAGI_FFA_DTYPE_*` codes the kernels take (`magi_ffa_supported_dtypes`), ascending; read at load. */
  readonly supportedDtypes: readonly number[];
  /** Text of the last failure on the calling (main) thread, `""` if none. */
  lastError(): string;
  /** The library-owned stream, created on first use and kept for the life of the process. */
  stream(): Deno.PointerValue;
  /** Frees device memory (held value: the device address) whose owner was collected without dispose(). */
  readonly leakedMemory: FinalizationRegistry<bigint>;
}

/** A failed library call: `status` is the `cudaError_t` or `MAGI_FFA_E_*` code. */
export class MagiFfaError extends Error {
  /** The nonzero status the call returned. */
  readonly status: number;
  /** What was being done, e.g. `"magi_ffa_forward"`. */
  readonly operation: string;

  /**
   * Builds the message from the status, its name when known, and the library's text.
   * @param status the status the library returned
   * @param operation the call or step that failed
   * @param detail the library's `magi_ffa_last_error()` text, if known
   */
  constructor(status: number, operation: string, detail: string) {
    const name = STATUS_NAMES.get(status);
    super(
      `magi-attn: ${operation} failed with status ${status}${name ? ` (${name})` : ""}` +
        (detail ? `: ${detail}` : ""),
    );
    this.name = "MagiFfaError";
    this.status = status;
    this.operation = operation;
  }
}

/** Names of the statuses worth recognising when the library's own text is not available. */
const STATUS_NAMES: ReadonlyMap<number, string> = new Map([
  [1, "cudaErrorInvalidValue"],
  [2, "cudaErrorMemoryAllocation: out of GPU memory"],
  [3, "cudaErrorInitializationError"],
  [35, "cudaErrorInsufficientDriver: no CUDA driver, or one older than the library's CUDA"],
  [100, "cudaErrorNoDevice: no CUDA-capable GPU"],
  [101, "cudaErrorInvalidDevice"],
  [209, "cudaErrorNoKernelImageForDevice: the library was not built for this GPU"],
  [400, "cudaErrorInvalidResourceHandle"],
  [700, "cudaErrorIllegalAddress"],
  [MAGI_FFA_ERROR.INVALID_ARGUMENT, "MAGI_FFA_E_INVALID_ARGUMENT"],
  [MAGI_FFA_ERROR.UNSUPPORTED, "MAGI_FFA_E_UNSUPPORTED"],
]);

/** Device-count statuses that mean "this machine has no usable driver or GPU". */
const NO_GPU_STATUSES: readonly number[] = [35, 100];

/** Lowest compute capability the CUDA backend runs on. */
const MIN_CAPABILITY = { major: 8, minor: 0 } as const;

/**
 * Throws a {@linkcode MagiFfaError} carrying `magi_ffa_last_error()` when `status` is nonzero. Use it
 * right after a plain (blocking) call, on the thread that made it.
 */
export function checkStatus(lib: CudaLibrary, status: number, what: string): void {
  if (status !== 0) throw new MagiFfaError(status, what, lib.lastError());
}

/**
 * Like {@linkcode checkStatus} for a `nonblocking` call: it ran on a worker thread, whose last-error text
 * the main thread cannot read, so the message names the status only.
 */
export function checkWorkerStatus(status: number, what: string): void {
  if (status !== 0) throw new MagiFfaError(status, what, "");
}

function isNotCapable(error: unknown): boolean {
  return error instanceof Deno.errors.NotCapable;
}

function readEnv(name: string): string | undefined {
  // Deliberately not caught: a NotCapable here means the user must grant --allow-env (or pass
  // libraryPath), and hiding it would turn a permission problem into a misleading "not found".
  const value = Deno.env.get(name);
  return value === "" ? undefined : value;
}

function localBuildPath(): string | undefined {
  const url = new URL(`../build/${LIBRARY_FILE_NAME}`, import.meta.url);
  return url.protocol === "file:" ? decodeURIComponent(url.pathname) : undefined;
}

function userCachePath(): { path?: string; reason?: string } {
  const cacheHome = readEnv("XDG_CACHE_HOME");
  const base = cacheHome ?? (() => {
    const home = readEnv("HOME");
    return home === undefined ? undefined : `${home}/.cache`;
  })();
  if (base === undefined) return { reason: "neither XDG_CACHE_HOME nor HOME is set" };
  return { path: `${base}/magi-attn/${PACKAGE_VERSION}/${LIBRARY_FILE_NAME}` };
}

/** One failed attempt, for the final error. */
interface Attempt {
  readonly candidate: LibraryCandidate | { path: string; source: string };
  readonly error: Error;
}

const loadedByPath = new Map<string, CudaLibrary>();
/** The library the default lookup found, remembered so repeated calls do not retry missing files. */
let defaultLibrary: CudaLibrary | undefined;

function abiMismatch(path: string, found: number): Error {
  return new BackendUnavailableError(
    `${path} has ABI version ${found} but this magi-attn needs ABI version ${MAGI_FFA_ABI_VERSION}; ` +
      "rebuild it with `deno task build`",
  );
}

/** Opens one file, checks its ABI and wraps it. Throws NotCapable as is, anything else as an Error. */
function openCandidate(path: string): CudaLibrary {
  const cached = loadedByPath.get(path);
  if (cached) return cached;
  const probe = openAbiProbe(path);
  let full: MagiFfaLibrary;
  try {
    const version = probe.symbols.magi_ffa_abi_version();
    if (version !== MAGI_FFA_ABI_VERSION) throw abiMismatch(path, version);
    // Opened while the probe handle is still open, so the file is not unloaded and loaded again.
    full = openMagiFfa(path);
  } finally {
    probe.close();
  }
  const library = wrapLibrary(path, full);
  loadedByPath.set(path, library);
  return library;
}

/** Reads one of the library's "what is supported" lists (the C side declares them once). */
function readSupportedList(
  path: string,
  read: (values: Int32Array, capacity: number, count: Int32Array) => number,
  what: string,
): readonly number[] {
  const count = new Int32Array(1);
  let values = new Int32Array(16);
  for (let attempt = 0; attempt < 2; attempt++) {
    const status = read(values, values.length, count);
    if (status !== 0) throw new MagiFfaError(status, `${what} (${path})`, "");
    if (count[0] <= values.length) return Object.freeze(Array.from(values.subarray(0, count[0])));
    values = new Int32Array(count[0]);
  }
  throw new MagiFfaError(MAGI_FFA_ERROR.INVALID_ARGUMENT, `${what} (${path})`, "the list kept growing");
}

function wrapLibrary(path: string, handle: MagiFfaLibrary): CudaLibrary {
  const symbols = handle.symbols;
  let stream: Deno.PointerValue | undefined;
  const library: CudaLibrary = {
    path,
    symbols,
    abiVersion: MAGI_FFA_ABI_VERSION,
    supportedHeadDims: readSupportedList(
      path,
      symbols.magi_ffa_supported_head_dims,
      "magi_ffa_supported_head_dims",
    ),
    supportedDtypes: readSupportedList(path, symbols.magi_ffa_supported_dtypes, "magi_ffa_supported_dtypes"),
    lastError(): string {
      const text = symbols.magi_ffa_last_error();
      return text === null ? "" : Deno.UnsafePointerView.getCString(text);
    },
    stream(): Deno.PointerValue {
      if (stream !== undefined) return stream;
      const slot = new BigUint64Array(1);
      checkStatus(library, symbols.magi_ffa_stream_create(slot), "magi_ffa_stream_create");
      stream = Deno.UnsafePointer.create(slot[0]);
      return stream;
    },
    leakedMemory: new FinalizationRegistry<bigint>((address) => {
      // A backstop only: the status is ignored because there is no caller left to tell.
      symbols.magi_ffa_free(Deno.UnsafePointer.create(address));
    }),
  };
  return Object.freeze(library);
}

/** Deno's dlopen error says "Could not open library: " twice; say it once. */
function withoutRepeatedPrefix(message: string): string {
  return message.replace(/^(.{1,80}?: )\1+/, "$1");
}

function describeAttempts(attempts: readonly Attempt[]): string {
  return attempts.map(({ candidate, error }) =>
    `  - ${candidate.path} (${candidate.source}): ${withoutRepeatedPrefix(error.message)}`
  )
    .join("\n");
}

/** The fix of every load failure, said once (callers that wrap the reason add no second one). */
const LOAD_FIX = "build it with `deno task build` in a checkout (`deno run -A jsr:@magi/attn/build` when " +
  "installed from JSR; needs nvcc), point MAGI_FFA_LIBRARY or the libraryPath option at a built " +
  'libmagi_ffa.so, or use backend "cpu"';

/** What a load failure was, without its fix, and its one-line summary: for the probe's `reason`/`summary`. */
const loadFailures = new WeakMap<Error, { reason: string; summary: string }>();

function loadFailure(reason: string, summary: string, cause?: Error): BackendUnavailableError {
  const error = new BackendUnavailableError(`magi-attn: ${reason}\nFix: ${LOAD_FIX}.`, { cause });
  loadFailures.set(error, { reason, summary });
  return error;
}

/** True when the loader's error says the file is not there (as opposed to there but unloadable). */
function isMissingFile(error: Error): boolean {
  return /No such file or directory|cannot open shared object file/.test(error.message);
}

function failure(attempts: readonly Attempt[], extra: readonly string[] = []): BackendUnavailableError {
  const lines = describeAttempts(attempts);
  const notes = extra.map((note) => `  - ${note}`).join("\n");
  const cause = attempts.length === 1
    ? attempts[0].error
    : new AggregateError(attempts.map((attempt) => attempt.error), "every candidate library failed to load");
  const missing = attempts.every((attempt) => isMissingFile(attempt.error));
  return loadFailure(
    `could not load the CUDA library ${LIBRARY_FILE_NAME}. Tried:\n${lines}` + (notes ? `\n${notes}` : ""),
    missing ? "CUDA library not found" : "CUDA library failed to load",
    cause,
  );
}

function tryCandidate(candidate: LibraryCandidate, attempts: Attempt[]): CudaLibrary | undefined {
  try {
    return openCandidate(candidate.path);
  } catch (error) {
    if (isNotCapable(error)) throw error;
    attempts.push({ candidate, error: error instanceof Error ? error : new Error(String(error)) });
    return undefined;
  }
}

/**
 * Loads the library (see the module documentation for where it looks), checks its ABI version and caches
 * it per path. Throws {@linkcode BackendUnavailableError} listing every path tried and why (`cause`: the
 * error, or an `AggregateError` of all of them), or `Deno.errors.NotCapable` when a permission is missing.
 */
export function loadCudaLibrary(opts: LibraryOptions = {}): CudaLibrary {
  const attempts: Attempt[] = [];
  const explicit: LibraryCandidate | undefined = opts.libraryPath !== undefined
    ? { path: opts.libraryPath, source: "option libraryPath" }
    : (() => {
      const fromEnv = readEnv("MAGI_FFA_LIBRARY");
      return fromEnv === undefined ? undefined : { path: fromEnv, source: "env MAGI_FFA_LIBRARY" } as const;
    })();
  if (explicit !== undefined) {
    const library = tryCandidate(explicit, attempts);
    if (library) return library;
    throw failure(attempts);
  }
  if (defaultLibrary) return defaultLibrary;
  const local = localBuildPath();
  const notes: string[] = [];
  if (local !== undefined) {
    const library = tryCandidate({ path: local, source: "local build" }, attempts);
    if (library) return remember(library);
  } else {
    notes.push("local build: skipped (magi-attn was not loaded from a file: URL)");
  }
  const cache = userCachePath();
  if (cache.path !== undefined) {
    const library = tryCandidate({ path: cache.path, source: "user cache" }, attempts);
    if (library) return remember(library);
  } else {
    notes.push(`user cache: skipped (${cache.reason})`);
  }
  if (attempts.length === 0) {
    throw loadFailure(
      `could not load the CUDA library ${LIBRARY_FILE_NAME}: no candidate path (${notes.join("; ")})`,
      "CUDA library not found",
    );
  }
  throw failure(attempts, notes);
}

function remember(library: CudaLibrary): CudaLibrary {
  defaultLibrary = library;
  return library;
}

/** The paths {@linkcode loadCudaLibrary} would try, in order (reads the environment the same way). */
export function libraryCandidates(opts: LibraryOptions = {}): LibraryCandidate[] {
  if (opts.libraryPath !== undefined) return [{ path: opts.libraryPath, source: "option libraryPath" }];
  const fromEnv = readEnv("MAGI_FFA_LIBRARY");
  if (fromEnv !== undefined) return [{ path: fromEnv, source: "env MAGI_FFA_LIBRARY" }];
  const candidates: LibraryCandidate[] = [];
  const local = localBuildPath();
  if (local !== undefined) candidates.push({ path: local, source: "local build" });
  const cache = userCachePath();
  if (cache.path !== undefined) candidates.push({ path: cache.path, source: "user cache" });
  return candidates;
}

/** One GPU as the probe saw it. */
export interface CudaDeviceInfo {
  /** CUDA device index. */
  readonly index: number;
  /** Marketing name, e.g. `"NVIDIA H100 80GB HBM3"`. */
  readonly name: string;
  /** Compute capability, major part. */
  readonly major: number;
  /** Compute capability, minor part. */
  readonly minor: number;
}

/** Whether the CUDA backend can run here, and if not, why. */
export interface CudaProbe {
  /** True when the library loaded and device 0 is a supported GPU. */
  readonly available: boolean;
  /** Why it is unavailable, in full: every path tried and what failed (absent when available). */
  readonly reason?: string;
  /** The reason in a few words on one line, e.g. `"CUDA library not found"` (absent when available). */
  readonly summary?: string;
  /** Path of the loaded library (when it loaded). */
  readonly libraryPath?: string;
  /** The GPUs found (when the driver answered). */
  readonly devices?: readonly CudaDeviceInfo[];
}

const probeCache = new Map<string, CudaProbe>();

function queryDevices(library: CudaLibrary): CudaProbe {
  const { symbols } = library;
  const count = new Int32Array(1);
  const status = symbols.magi_ffa_device_count(count);
  if (status !== 0) {
    const text = library.lastError();
    const detail = `magi_ffa_device_count returned ${status}${text ? `: ${text}` : ""}`;
    const noGpu = NO_GPU_STATUSES.includes(status);
    const reason = noGpu ? `no CUDA driver/GPU (${detail})` : detail;
    const summary = noGpu ? "no CUDA driver/GPU" : "the CUDA driver failed to list the GPUs";
    return { available: false, reason, summary, libraryPath: library.path };
  }
  if (count[0] === 0) {
    return {
      available: false,
      reason: "no CUDA driver/GPU (the driver reports 0 devices)",
      summary: "no CUDA driver/GPU",
      libraryPath: library.path,
    };
  }
  const devices: CudaDeviceInfo[] = [];
  const name = new Uint8Array(256);
  const major = new Int32Array(1);
  const minor = new Int32Array(1);
  for (let index = 0; index < count[0]; index++) {
    name.fill(0);
    checkStatus(
      library,
      symbols.magi_ffa_device_name(index, name, BigInt(name.length)),
      "magi_ffa_device_name",
    );
    checkStatus(
      library,
      symbols.magi_ffa_device_capability(index, major, minor),
      "magi_ffa_device_capability",
    );
    const end = name.indexOf(0);
    devices.push(Object.freeze({
      index,
      name: new TextDecoder().decode(name.subarray(0, end < 0 ? name.length : end)),
      major: major[0],
      minor: minor[0],
    }));
  }
  const first = devices[0];
  if (first.major < MIN_CAPABILITY.major) {
    return {
      available: false,
      reason:
        `GPU 0 (${first.name}) has compute capability ${first.major}.${first.minor}; the CUDA backend ` +
        `needs ${MIN_CAPABILITY.major}.${MIN_CAPABILITY.minor} or newer (use backend "cpu")`,
      summary: `GPU 0 has compute capability ${first.major}.${first.minor}, below ${MIN_CAPABILITY.major}.` +
        `${MIN_CAPABILITY.minor}`,
      libraryPath: library.path,
      devices,
    };
  }
  return { available: true, libraryPath: library.path, devices };
}

/**
 * Reports whether the CUDA backend can run: the library loads (ABI checked), the driver sees a GPU, and
 * GPU 0 has compute capability ≥ 8.0. A missing library, driver or GPU gives `available: false` with the
 * reason, never an exception; a missing permission still throws `Deno.errors.NotCapable`. The answer is
 * cached per `libraryPath` for the life of the process.
 */
export function probeCudaBackend(opts: LibraryOptions = {}): CudaProbe {
  // Strict like every options object of the API (a hand check: the loader stays free of the schema module).
  if (typeof opts !== "object" || opts === null) {
    throw new MagiAttnInputError(
      "opts",
      `is ${String(opts)}, not an object`,
      "pass { libraryPath } or nothing",
    );
  }
  for (const name of Object.keys(opts)) {
    if (name !== "libraryPath") {
      throw new MagiAttnInputError(
        `opts.${name}`,
        "is not an option of probeCudaBackend, so it would be ignored",
        unknownOptionFix(name, ["libraryPath"]),
      );
    }
  }
  const cacheKey = opts.libraryPath ?? "";
  const cached = probeCache.get(cacheKey);
  if (cached) return cached;
  let result: CudaProbe;
  try {
    result = queryDevices(loadCudaLibrary(opts));
  } catch (error) {
    if (isNotCapable(error)) throw error;
    if (!(error instanceof BackendUnavailableError || error instanceof MagiFfaError)) throw error;
    const known = loadFailures.get(error);
    result = known
      ? { available: false, reason: known.reason, summary: known.summary }
      : { available: false, reason: error.message, summary: "a CUDA driver query failed" };
  }
  const frozen = Object.freeze(result);
  probeCache.set(cacheKey, frozen);
  return frozen;
}
