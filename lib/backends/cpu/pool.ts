/**
 * The CPU path's worker pool: Web Workers (so it works when the module is imported from a file path, a
 * remote URL or JSR), one per thread asked for, sharing tensors through SharedArrayBuffers. Calls run one
 * after another; the tasks of a call go to whichever worker is free. A worker idle for a moment is
 * terminated, so a process that used the CPU path still exits promptly and tests see no leaked workers.
 * @module
 */

import type { BackwardBuffers, BackwardTask, CpuProblem, ForwardBuffers, ForwardTask } from "./problem.ts";
import type { PoolReply, PoolRequest } from "./protocol.ts";

/** One call's work for the pool. */
export type PoolJob =
  | { kind: "forward"; problem: CpuProblem; buffers: ForwardBuffers; tasks: readonly ForwardTask[] }
  | { kind: "backward"; problem: CpuProblem; buffers: BackwardBuffers; tasks: readonly BackwardTask[] };

const WORKER_URL = new URL("./worker.ts", import.meta.url);

interface Slot {
  worker: Worker;
  /** The job whose problem this worker holds. */
  jobId: number;
  busy: boolean;
  onReply?: (reply: PoolReply) => void;
  onFailure?: (message: string) => void;
}

/** Why workers cannot be used here (undefined when they can), checked without prompting. */
export function workerUnavailableReason(): string | undefined {
  if (typeof Worker === "undefined" || typeof SharedArrayBuffer === "undefined") {
    return "this runtime has no Web Workers with SharedArrayBuffer";
  }
  if (workersBroken) return workersBroken;
  try {
    if (WORKER_URL.protocol === "file:") {
      const state = Deno.permissions.querySync({ name: "read", path: WORKER_URL }).state;
      if (state !== "granted") return `no read permission for ${WORKER_URL.pathname} (--allow-read)`;
    } else if (WORKER_URL.protocol === "http:" || WORKER_URL.protocol === "https:") {
      const state = Deno.permissions.querySync({ name: "import", host: WORKER_URL.host }).state;
      if (state !== "granted") return `no import permission for ${WORKER_URL.host} (--allow-import)`;
    }
  } catch {
    // A runtime without this permission kind: try, and fall back if the worker fails to start.
  }
  return undefined;
}

/** Set when a worker failed to start or crashed: the process then stays with in-thread execution. */
let workersBroken: string | undefined;

class WorkerPool {
  private readonly slots: Slot[] = [];
  private nextJobId = 1;
  private tail: Promise<void> = Promise.resolve();

  /** Runs the job on `threads` workers; calls queue behind each other. Rejects if a worker fails. */
  run(job: PoolJob, threads: number): Promise<void> {
    const result = this.tail.then(() => this.runNow(job, threads));
    this.tail = result.catch(() => {});
    return result;
  }

  private spawn(): Slot {
    const worker = new Worker(WORKER_URL, { type: "module", name: "magi-attn-cpu" });
    const slot: Slot = { worker, jobId: 0, busy: false };
    worker.onmessage = (event: MessageEvent<PoolReply>) => {
      const reply = event.data;
      if (reply.type === "idle") {
        // Quit only if no task was handed out since the worker's timer fired.
        if (!slot.busy) this.retire(slot);
        return;
      }
      slot.onReply?.(reply);
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault(); // never let a worker's error end the process: the caller falls back
      workersBroken = `a CPU worker failed: ${event.message}`;
      this.retire(slot);
      slot.onFailure?.(workersBroken);
    };
    this.slots.push(slot);
    return slot;
  }

  private retire(slot: Slot): void {
    slot.worker.terminate();
    const index = this.slots.indexOf(slot);
    if (index >= 0) this.slots.splice(index, 1);
  }

  private runNow(job: PoolJob, threads: number): Promise<void> {
    while (this.slots.length < threads) this.spawn();
    const jobId = this.nextJobId++;
    const slots = this.slots.slice(0, threads);
    return new Promise<void>((resolve, reject) => {
      let next = 0;
      let finished = 0;
      let failed = false;
      const fail = (message: string) => {
        if (failed) return;
        failed = true;
        // Stop every worker of this job, so none writes into the buffers the caller now recomputes.
        for (const slot of slots) this.retire(slot);
        reject(new Error(message));
      };
      const feed = (slot: Slot) => {
        if (failed) return;
        if (next >= job.tasks.length) {
          slot.busy = false;
          slot.onReply = undefined;
          slot.onFailure = undefined;
          return;
        }
        const taskIndex = next++;
        slot.busy = true;
        if (slot.jobId !== jobId) {
          slot.jobId = jobId;
          const request: PoolRequest = { type: "job", jobId, problem: job.problem, buffers: job.buffers };
          slot.worker.postMessage(request);
        }
        const request: PoolRequest = job.kind === "forward"
          ? { type: "task", jobId, taskIndex, kind: "forward", forward: job.tasks[taskIndex] }
          : { type: "task", jobId, taskIndex, kind: "backward", backward: job.tasks[taskIndex] };
        slot.worker.postMessage(request);
      };
      for (const slot of slots) {
        slot.onReply = (reply) => {
          if (reply.type === "failed") {
            workersBroken = `a CPU worker failed: ${reply.message}`;
            fail(workersBroken);
            return;
          }
          if (reply.type !== "done" || reply.jobId !== jobId) return;
          finished++;
          if (finished === job.tasks.length) {
            for (const each of slots) {
              each.busy = false;
              each.onReply = undefined;
              each.onFailure = undefined;
            }
            resolve();
            return;
          }
          feed(slot);
        };
        slot.onFailure = fail;
      }
      if (job.tasks.length === 0) {
        resolve();
        return;
      }
      for (const slot of slots) feed(slot);
    });
  }
}

let pool: WorkerPool | undefined;

/** Runs `job` on the shared pool with `threads` workers (started on first use). */
export function runOnPool(job: PoolJob, threads: number): Promise<void> {
  pool ??= new WorkerPool();
  return pool.run(job, threads);
}
