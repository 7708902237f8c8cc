/**
 * Messages between the CPU pool (`pool.ts`) and its workers (`worker.ts`).
 * @module
 */

import type { BackwardBuffers, BackwardTask, CpuProblem, ForwardBuffers, ForwardTask } from "./problem.ts";

/** Pool → worker: the problem and shared buffers of one call (sent once per worker per call), or a task. */
export type PoolRequest =
  | { type: "job"; jobId: number; problem: CpuProblem; buffers: ForwardBuffers | BackwardBuffers }
  | {
    type: "task";
    jobId: number;
    taskIndex: number;
    kind: "forward" | "backward";
    forward?: ForwardTask;
    backward?: BackwardTask;
  };

/** Worker → pool: a task finished or failed, or the worker has been idle and offers to quit. */
export type PoolReply =
  | { type: "done"; jobId: number; taskIndex: number }
  | { type: "failed"; jobId: number; message: string }
  | { type: "idle" };
