/**
 * The options of `flexFlashAttnForward`, `flexFlashAttnBackward` and `backendInfo`: strict zod
 * schemas (unknown keys rejected with the valid ones and a did-you-mean).
 * @module
 */

import { type StrictParser, strictParser, z } from "../core/schema.ts";
import type { Backend, FlexAttnOptions } from "./ffa.ts";

const BACKENDS = ["auto", "cpu", "cuda"] as const satisfies readonly Backend[];

const FLEX_ATTN_OPTIONS = z.strictObject({
  softmaxScale: z.number().positive().optional(),
  softcap: z.number().min(0).optional(),
  backend: z.enum(BACKENDS).optional(),
  deterministic: z.boolean().optional(),
  libraryPath: z.string().optional(),
});

// Every key of FlexAttnOptions has a schema entry and the other way round (a new option must be added here).
const KEYS_MATCH:
  & Record<keyof FlexAttnOptions, true>
  & Record<keyof z.output<typeof FLEX_ATTN_OPTIONS>, true> = {
    softmaxScale: true,
    softcap: true,
    backend: true,
    deterministic: true,
    libraryPath: true,
  };
void KEYS_MATCH;

/** Parses the options of `flexFlashAttnForward` / `flexFlashAttnBackward` (strict). */
export const parseFlexAttnOptions: StrictParser<z.output<typeof FLEX_ATTN_OPTIONS>> = strictParser(
  FLEX_ATTN_OPTIONS,
  {
    field: "opts",
    owner: "flexFlashAttnForward / flexFlashAttnBackward",
    fix: "pass an options object, or omit it",
    fixes: {
      softmaxScale: "pass a finite number > 0, or leave it out for 1/sqrt(headDim)",
      softcap: "pass a finite number ≥ 0 (0 turns soft-capping off)",
      backend: `use one of ${BACKENDS.map((name) => `"${name}"`).join(", ")}`,
      deterministic: "pass true or false",
      libraryPath: "pass the path of libmagi_ffa.so as a string, or leave it out",
    },
  },
);

/** Parses the options of `backendInfo` (strict). */
export const parseBackendInfoOptions: StrictParser<{ libraryPath?: string }> = strictParser(
  z.strictObject({ libraryPath: z.string().optional() }),
  {
    field: "options",
    owner: "backendInfo",
    fix: "pass { libraryPath } or nothing",
    fixes: { libraryPath: "pass the path of libmagi_ffa.so as a string, or leave it out" },
  },
);
