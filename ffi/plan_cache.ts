/**
 * The CUDA backend's plans: each flex key is uploaded once (`magi_ffa_plan_create`) and cached in a
 * `WeakMap` keyed by the key object, so the same compiled key reuses its plan across layers and steps. A
 * plan whose key has been collected is destroyed later, after the streams it ran on have been synchronized.
 * The cache assumes a key's arrays do not change after its first use (keys from `compileFlexKey` are never
 * changed).
 * @module
 */

import type { FlexKey } from "../lib/core/types.ts";
import { checkStatus, checkWorkerStatus, type CudaLibrary } from "./library.ts";

/** One uploaded key, and the streams that used it (whose work must finish before it is destroyed). */
interface PlanEntry {
  readonly pointer: Deno.PointerValue;
  readonly streams: bigint[];
}

/** Per-library state of the backend. */
export interface BackendState {
  readonly library: CudaLibrary;
  readonly plans: WeakMap<FlexKey, PlanEntry>;
  /** Plans whose keys were collected, waiting for their streams to be synchronized. */
  readonly retired: PlanEntry[];
  readonly planFinalizer: FinalizationRegistry<PlanEntry>;
}

/** Retired plans are destroyed in batches of this size (each batch costs a stream synchronization). */
export const RETIRED_PLAN_BATCH = 16;

const states = new Map<CudaLibrary, BackendState>();
let lastState: BackendState | undefined;
const planSlot = new BigUint64Array(1);

/** The backend state of `library`, created on first use. */
export function stateFor(library: CudaLibrary): BackendState {
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

/** The plan of `key` (uploaded on first use), noting that `streamValue` runs work with it. */
export function planFor(state: BackendState, key: FlexKey, streamValue: bigint): Deno.PointerValue {
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
export async function destroyRetiredPlans(state: BackendState): Promise<void> {
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

/** Number of plans (uploaded keys) waiting to be destroyed, for tests and diagnostics. */
export function retiredPlanCount(library: CudaLibrary): number {
  return states.get(library)?.retired.length ?? 0;
}
