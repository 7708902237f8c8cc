/**
 * `deno task test:gpu` exists to test the GPU: it sets `MAGI_REQUIRE_GPU=1`, and then this test fails when
 * no GPU test can run here, so a machine without a GPU (or without the built library) does not report
 * "ok | 0 passed" for a run that tested nothing. `deno task test` does not set it: there the GPU tests
 * skip themselves quietly. `MAGI_PARITY_DRY_RUN=1` (the GPU tests on the CPU reference) opts out.
 */

import assert from "node:assert/strict";
import { backendInfo } from "../../lib/backends/ffa.ts";
import { backendNotice } from "../support/backend_notice.ts";

/** Set by `deno task test:gpu`. */
export const REQUIRE_GPU_ENV = "MAGI_REQUIRE_GPU";

const required = Deno.env.get(REQUIRE_GPU_ENV) === "1" && Deno.env.get("MAGI_PARITY_DRY_RUN") !== "1";

Deno.test({
  name: `the GPU tests can run (${REQUIRE_GPU_ENV}=1, set by \`deno task test:gpu\`)`,
  ignore: !required,
  fn() {
    const info = backendInfo();
    if (info.backend === "cuda") return;
    assert.fail(
      `NOTHING RAN: every GPU test was skipped (${
        backendNotice("", info)
      }. Fix: run \`deno task test:gpu\` on a machine with an NVIDIA GPU (compute capability 8.0 or newer) ` +
        "after `deno task build`, or run `deno task test` for the CPU tests.",
    );
  },
});
