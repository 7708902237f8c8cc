/**
 * Worker entry of the CPU pool (`pool.ts`): runs forward/backward tasks on tensors shared through
 * SharedArrayBuffers. After {@linkcode IDLE_MS} without work it tells the pool, which then terminates it, so
 * an idle pool never keeps a process alive for long.
 * @module
 */

import { CpuKernels } from "./kernels.ts";
import type { BackwardBuffers, CpuProblem, ForwardBuffers } from "./problem.ts";
import type { PoolReply, PoolRequest } from "./protocol.ts";

/** How long a worker waits for more work before offering to quit. */
const IDLE_MS = 400;

interface WorkerScope {
  postMessage(message: PoolReply): void;
  onmessage: ((event: MessageEvent<PoolRequest>) => void) | null;
}

const scope = globalThis as unknown as WorkerScope;
const kernels = new CpuKernels();
const jobs = new Map<number, { problem: CpuProblem; buffers: ForwardBuffers | BackwardBuffers }>();
let idleTimer: ReturnType<typeof setTimeout> | undefined;

function armIdleTimer(): void {
  clearTimeout(idleTimer);
  idleTimer = setTimeout(() => scope.postMessage({ type: "idle" }), IDLE_MS);
}

scope.onmessage = (event: MessageEvent<PoolRequest>) => {
  const request = event.data;
  clearTimeout(idleTimer);
  try {
    if (request.type === "job") {
      jobs.clear(); // one call at a time per worker: a new job replaces the previous one
      jobs.set(request.jobId, { problem: request.problem, buffers: request.buffers });
    } else if (request.type === "task") {
      const job = jobs.get(request.jobId);
      if (!job) throw new Error(`unknown job ${request.jobId}`);
      if (request.kind === "forward") {
        kernels.forward(job.problem, job.buffers as ForwardBuffers, request.forward!);
      } else {
        kernels.backward(job.problem, job.buffers as BackwardBuffers, request.backward!);
      }
      scope.postMessage({ type: "done", jobId: request.jobId, taskIndex: request.taskIndex });
    }
  } catch (error) {
    scope.postMessage({
      type: "failed",
      jobId: "jobId" in request ? request.jobId : -1,
      message: error instanceof Error ? `${error.message}\n${error.stack ?? ""}` : String(error),
    });
  }
  armIdleTimer();
};
armIdleTimer();
