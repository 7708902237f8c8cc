/**
 * The fast CPU path: flex flash attention forward and backward, bit-identical to `referenceForward` and
 * `referenceBackward` (same float64 operations in the same order; see `kernels.ts`), but tiled, with the
 * matrix products in WebAssembly SIMD, and spread over a pool of Web Workers so the calling thread's event
 * loop keeps running. Without workers (no read permission for the worker module, or `threads: 0`) the tasks
 * run in the calling thread, yielding to the event loop between tasks.
 * @module
 */

import {
  referenceBackward,
  type ReferenceBackwardResult,
  referenceForward,
  type ReferenceForwardResult,
  type ReferenceOptions,
  requireHostInputs,
} from "../reference.ts";
import { type DType, type HostTensor, tensor, type TensorData } from "../../core/tensor.ts";
import type { FlexKey } from "../../core/types.ts";
import { type ForwardShape, validateBackwardArgs, validateForwardArgs } from "../../core/validate.ts";
import { MagiAttnInputError } from "../../core/errors.ts";
import { CpuKernels } from "./kernels.ts";
import type { BackwardBuffers, CpuProblem, ForwardBuffers } from "./problem.ts";
import { countCells, planBackward, planForward } from "./plan.ts";
import { type PoolJob, runOnPool, workerUnavailableReason } from "./pool.ts";

/** Options of {@linkcode cpuForward} and {@linkcode cpuBackward}. */
export interface CpuOptions extends ReferenceOptions {
  /**
   * Worker threads. Default: the `MAGI_CPU_THREADS` environment variable, else
   * `navigator.hardwareConcurrency`. 0 runs every task in the calling thread (yielding to the event loop
   * between tasks). Results do not depend on it.
   */
  threads?: number;
}

/** How a {@linkcode cpuForward} or {@linkcode cpuBackward} call ran (see {@linkcode lastCpuRun}). */
export interface CpuRunInfo {
  /** `"workers"` (the pool), `"in-thread"` (the calling thread) or `"reference"` (non-finite inputs). */
  mode: "workers" | "in-thread" | "reference";
  /** Worker threads used (0 unless `mode` is `"workers"`). */
  threads: number;
  /** Tasks the call was cut into. */
  tasks: number;
  /** Why workers were not used, when they were asked for but not used. */
  reason?: string;
}

let lastRun: CpuRunInfo = { mode: "in-thread", threads: 0, tasks: 0 };

/** How the last CPU-path call of this process ran: for diagnostics and tests. */
export function lastCpuRun(): CpuRunInfo {
  return { ...lastRun };
}

/** Below this many FLOPs a call runs in the calling thread at once: starting workers would cost more. */
const IN_THREAD_FLOPS = 3e7;
/** In the calling thread, tasks are cut to about this many FLOPs (a few ms each) between event-loop turns. */
const IN_THREAD_TASK_FLOPS = 4e7;

function resolveThreads(requested: number | undefined): number {
  if (requested !== undefined) {
    if (!Number.isSafeInteger(requested) || requested < 0) {
      throw new MagiAttnInputError(
        "opts.threads",
        `is ${String(requested)}`,
        "pass a non-negative integer (0 runs in the calling thread), or omit it",
      );
    }
    return requested;
  }
  let fromEnv: string | undefined;
  try {
    if (Deno.permissions.querySync({ name: "env", variable: "MAGI_CPU_THREADS" }).state === "granted") {
      fromEnv = Deno.env.get("MAGI_CPU_THREADS");
    }
  } catch {
    fromEnv = undefined;
  }
  const parsed = fromEnv === undefined ? NaN : Number(fromEnv);
  if (Number.isSafeInteger(parsed) && parsed >= 0) return parsed;
  return Math.max(1, navigator.hardwareConcurrency || 1);
}

/** Any NaN or ±∞ in `data` (bf16 is read by its exponent bits). */
function hasNonFinite(data: TensorData, dtype: DType): boolean {
  if (dtype === "bfloat16") {
    for (let index = 0; index < data.length; index++) if ((data[index] & 0x7f80) === 0x7f80) return true;
    return false;
  }
  for (let index = 0; index < data.length; index++) if (!Number.isFinite(data[index])) return true;
  return false;
}

function emptyLike(dtype: DType, length: number, shared: boolean): TensorData {
  const bytes = (dtype === "float32" ? 4 : 2) * length;
  const buffer = shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
  if (dtype === "float32") return new Float32Array(buffer);
  if (dtype === "float16") return new Float16Array(buffer);
  return new Uint16Array(buffer);
}

function sharedCopy(data: TensorData, dtype: DType): TensorData {
  const copy = emptyLike(dtype, data.length, true);
  copy.set(data as never);
  return copy;
}

/** A plain (unshared) copy, so results never hand SharedArrayBuffers to the caller. */
function unshared<T extends TensorData>(data: T): T {
  return data.buffer instanceof SharedArrayBuffer ? data.slice() as T : data;
}

function problemOf(shape: ForwardShape, key: FlexKey): CpuProblem {
  return { ...shape, qRanges: key.qRanges, kRanges: key.kRanges, attnTypeMap: key.attnTypeMap };
}

/** Forward FLOPs of a problem with `cells` visible cells (the project's count: 4 · area · Hq · D). */
function forwardFlops(problem: CpuProblem, cells: number): number {
  return 4 * cells * problem.numHeadsQ * problem.headDim;
}

/** Runs `tasks` in this thread, giving the event loop a turn between tasks (not before the first). */
async function runInThread<T>(tasks: readonly T[], run: (task: T) => void): Promise<void> {
  for (let index = 0; index < tasks.length; index++) {
    if (index > 0) await new Promise((resolve) => setTimeout(resolve, 0));
    run(tasks[index]);
  }
}

/** How a call runs: on `threads` workers, or in the calling thread (`threads` 0, with the reason). */
function chooseThreads(requested: number, flops: number): { threads: number; reason?: string } {
  if (requested === 0) return { threads: 0 };
  if (flops < IN_THREAD_FLOPS) return { threads: 0, reason: "small call" };
  const reason = workerUnavailableReason();
  return reason === undefined ? { threads: requested } : { threads: 0, reason };
}

/**
 * Flex flash attention forward on the CPU, fast: the same arguments, checks and results (bit for bit) as
 * `referenceForward`, run tiled in WebAssembly on worker threads. Inputs with NaN or ±∞ in v go to
 * `referenceForward` (a masked cell times ∞ would differ there).
 * Throws {@linkcode MagiAttnInputError} for bad input.
 */
export async function cpuForward(
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  key: FlexKey,
  opts: CpuOptions = {},
): Promise<ReferenceForwardResult> {
  const shape = validateForwardArgs(q, k, v, key, opts);
  requireHostInputs([q, k, v], ["q", "k", "v"]);
  const requestedThreads = resolveThreads(opts.threads);
  if (hasNonFinite(v.data, shape.dtype)) {
    lastRun = { mode: "reference", threads: 0, tasks: 1 };
    return referenceForward(q, k, v, key, opts);
  }
  const problem = problemOf(shape, key);
  const cells = countCells(problem);
  const flops = forwardFlops(problem, cells.total);
  const { threads, reason: notOnWorkers } = chooseThreads(requestedThreads, flops);
  let reason = notOnWorkers;
  const length = shape.totalQ * shape.numHeadsQ;

  if (threads > 0) {
    const buffers: ForwardBuffers = {
      q: sharedCopy(q.data, shape.dtype),
      k: sharedCopy(k.data, shape.dtype),
      v: sharedCopy(v.data, shape.dtype),
      out: emptyLike(shape.dtype, q.data.length, true),
      lse: new Float32Array(new SharedArrayBuffer(4 * length)),
    };
    const tasks = planForward(problem, cells, Math.ceil((4 * threads) / problem.numHeadsKV));
    const job: PoolJob = { kind: "forward", problem, buffers, tasks };
    const failure = await runOnPool(job, threads).then(() => undefined, (error: Error) => error.message);
    lastRun = { mode: "workers", threads, tasks: tasks.length };
    reason = failure;
    if (failure === undefined) {
      return {
        out: tensor(unshared(buffers.out), q.shape, shape.dtype),
        lse: tensor(unshared(buffers.lse), [shape.totalQ, shape.numHeadsQ], "float32"),
      };
    }
  }
  const buffers: ForwardBuffers = {
    q: q.data,
    k: k.data,
    v: v.data,
    out: emptyLike(shape.dtype, q.data.length, false),
    lse: new Float32Array(length),
  };
  const chunks = Math.ceil(flops / IN_THREAD_TASK_FLOPS / problem.numHeadsKV);
  const kernels = new CpuKernels();
  const tasks = planForward(problem, cells, chunks);
  lastRun = { mode: "in-thread", threads: 0, tasks: tasks.length, reason };
  await runInThread(tasks, (task) => kernels.forward(problem, buffers, task));
  return {
    out: tensor(buffers.out, q.shape, shape.dtype),
    lse: tensor(buffers.lse, [shape.totalQ, shape.numHeadsQ], "float32"),
  };
}

/**
 * Flex flash attention backward on the CPU, fast: the same arguments, checks and results (bit for bit) as
 * `referenceBackward`, run tiled in WebAssembly on worker threads. Inputs with NaN or ±∞ in q, k or dout go
 * to `referenceBackward`. Throws {@linkcode MagiAttnInputError} for bad input.
 */
export async function cpuBackward(
  dout: HostTensor,
  q: HostTensor,
  k: HostTensor,
  v: HostTensor,
  out: HostTensor,
  lse: HostTensor,
  key: FlexKey,
  opts: CpuOptions = {},
): Promise<ReferenceBackwardResult> {
  const shape = validateBackwardArgs(dout, q, k, v, out, lse, key, opts);
  requireHostInputs([dout, q, k, v, out, lse], ["dout", "q", "k", "v", "out", "lse"]);
  const requestedThreads = resolveThreads(opts.threads);
  if ([q, k, dout].some((item) => hasNonFinite(item.data, shape.dtype))) {
    lastRun = { mode: "reference", threads: 0, tasks: 1 };
    return referenceBackward(dout, q, k, v, out, lse, key, opts);
  }
  const problem = problemOf(shape, key);
  const cells = countCells(problem);
  const flops = 2.5 * forwardFlops(problem, cells.total);
  const { threads, reason: notOnWorkers } = chooseThreads(requestedThreads, flops);
  let reason = notOnWorkers;
  const { dtype } = shape;

  if (threads > 0) {
    const buffers: BackwardBuffers = {
      dout: sharedCopy(dout.data, dtype),
      q: sharedCopy(q.data, dtype),
      k: sharedCopy(k.data, dtype),
      v: sharedCopy(v.data, dtype),
      out: sharedCopy(out.data, dtype),
      lse: sharedCopy(lse.data, "float32") as Float32Array,
      dqAccumulator: new Float64Array(new SharedArrayBuffer(8 * q.data.length)),
      dq: emptyLike(dtype, q.data.length, true),
      dk: emptyLike(dtype, k.data.length, true),
      dv: emptyLike(dtype, v.data.length, true),
    };
    // One task per kv head does no work twice; split the heads when that would leave threads idle.
    const heads = problem.numHeadsKV;
    const perHead = heads >= threads && (heads % threads === 0 || heads >= 3 * threads)
      ? 1
      : Math.ceil((3 * threads) / heads);
    const tasks = planBackward(problem, cells, perHead);
    const job: PoolJob = { kind: "backward", problem, buffers, tasks };
    const failure = await runOnPool(job, threads).then(() => undefined, (error: Error) => error.message);
    lastRun = { mode: "workers", threads, tasks: tasks.length };
    reason = failure;
    if (failure === undefined) {
      return {
        dq: tensor(unshared(buffers.dq), q.shape, dtype),
        dk: tensor(unshared(buffers.dk), k.shape, dtype),
        dv: tensor(unshared(buffers.dv), v.shape, dtype),
      };
    }
  }
  const buffers: BackwardBuffers = {
    dout: dout.data,
    q: q.data,
    k: k.data,
    v: v.data,
    out: out.data,
    lse: lse.data as Float32Array,
    dqAccumulator: new Float64Array(q.data.length),
    dq: emptyLike(dtype, q.data.length, false),
    dk: emptyLike(dtype, k.data.length, false),
    dv: emptyLike(dtype, v.data.length, false),
  };
  const chunks = Math.ceil(flops / IN_THREAD_TASK_FLOPS / problem.numHeadsKV);
  const kernels = new CpuKernels();
  const tasks = planBackward(problem, cells, chunks);
  lastRun = { mode: "in-thread", threads: 0, tasks: tasks.length, reason };
  await runInThread(tasks, (task) => kernels.backward(problem, buffers, task));
  return {
    dq: tensor(buffers.dq, q.shape, dtype),
    dk: tensor(buffers.dk, k.shape, dtype),
    dv: tensor(buffers.dv, v.shape, dtype),
  };
}
