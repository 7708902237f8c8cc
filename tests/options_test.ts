/**
 * Issue 10 item 5: every options object of the public API rejects unknown keys (never ignores them), naming
 * the key, listing the valid ones and suggesting the closest. A table of every options-taking entry point,
 * and a seeded fuzzer of misspellings of each valid key.
 */

import assert from "node:assert/strict";
import {
  AttnMaskSpec,
  backendInfo,
  emptyDevice,
  flexFlashAttnBackward,
  flexFlashAttnForward,
  magiAttentionForward,
  MagiAttnInputError,
  makeMagiAttnFunc,
  maskToSvg,
  randomTensor,
  sdpaAttentionForward,
  setAttnSpecOnAttention,
  synchronize,
  tensor,
  toDevice,
  toFlexKey,
} from "../mod.ts";
import { probeCudaBackend, seededRandom } from "../testing.ts";
import { compileFlexKey } from "../lib/masks/flex_key.ts";
import { cudaBackward, cudaForward } from "../ffi/cuda_backend.ts";

class SelfAttention {}

const q3 = randomTensor([4, 2, 8]);
const q4 = randomTensor([1, 2, 4, 8]);
const key = compileFlexKey(AttnMaskSpec.causal(4));
const lse = tensor(new Float32Array(8), [4, 2]);

/** An entry point taking an options object: its valid keys and a call with `options` in place. */
interface OptionsEntry {
  readonly name: string;
  /** Field prefix of its errors (`opts` or `options`, or `""` for top-level keys). */
  readonly field: string;
  readonly keys: readonly string[];
  readonly call: (options: Record<string, unknown>) => unknown;
}

const ENTRIES: readonly OptionsEntry[] = [
  {
    name: "flexFlashAttnForward",
    field: "opts",
    keys: ["softmaxScale", "softcap", "backend", "deterministic", "libraryPath"],
    call: (options) => flexFlashAttnForward(q3, q3, q3, key, options),
  },
  {
    name: "flexFlashAttnBackward",
    field: "opts",
    keys: ["softmaxScale", "softcap", "backend", "deterministic", "libraryPath"],
    call: (options) => flexFlashAttnBackward(q3, q3, q3, q3, q3, lse, key, options),
  },
  { name: "backendInfo", field: "options", keys: ["libraryPath"], call: (options) => backendInfo(options) },
  {
    name: "probeCudaBackend",
    field: "opts",
    keys: ["libraryPath"],
    call: (options) => probeCudaBackend(options as never),
  },
  {
    name: "AttnMaskSpec.varlen",
    field: "options",
    keys: ["causal"],
    call: (options) => AttnMaskSpec.varlen([4], options),
  },
  {
    name: "AttnMaskSpec.fromCuSeqlens",
    field: "options",
    keys: ["causal"],
    call: (options) => AttnMaskSpec.fromCuSeqlens([0, 4], options),
  },
  {
    name: "AttnMaskSpec.slidingWindow",
    field: "window",
    keys: ["left", "right"],
    call: (options) => AttnMaskSpec.slidingWindow(4, { left: 1, right: 0, ...options } as never),
  },
  {
    name: "AttnMaskSpec.fromRanges",
    field: "",
    keys: ["qRanges", "kRanges", "maskTypes", "totalSeqlenQ", "totalSeqlenK"],
    call: (options) => AttnMaskSpec.fromRanges({ qRanges: [], kRanges: [], maskTypes: [], ...options }),
  },
  {
    name: "toFlexKey (plain key)",
    field: "key",
    keys: ["qRanges", "kRanges", "attnTypeMap", "totalSeqlenQ", "totalSeqlenK"],
    call: (options) => toFlexKey({ qRanges: [], kRanges: [], attnTypeMap: [], ...options }),
  },
  {
    name: "randomTensor",
    field: "options",
    keys: ["seed", "dtype", "scale"],
    call: (options) => randomTensor([2], options),
  },
  {
    name: "maskToSvg",
    field: "options",
    keys: ["maxCells", "title", "cellSize"],
    call: (options) => maskToSvg(AttnMaskSpec.causal(4), options),
  },
  {
    name: "sdpaAttentionForward",
    field: "opts",
    keys: ["dropout", "scaling", "isCausal", "slidingWindow", "softcap"],
    call: (options) => sdpaAttentionForward(new SelfAttention(), q4, q4, q4, null, options),
  },
  {
    name: "magiAttentionForward",
    field: "opts",
    keys: ["dropout", "scaling", "isCausal", "slidingWindow", "softcap"],
    call: (options) => magiAttentionForward(new SelfAttention(), q4, q4, q4, null, options),
  },
  {
    name: "makeMagiAttnFunc",
    field: "factoryOptions",
    keys: ["softmaxScale"],
    call: (options) => makeMagiAttnFunc(options),
  },
  {
    name: "the magi attention function",
    field: "options",
    keys: ["magiAttnSpec", "cuSeqlens", "windowSize", "module"],
    call: (options) => makeMagiAttnFunc()(q3, q3, q3, options),
  },
  {
    name: "setAttnSpecOnAttention",
    field: "options",
    keys: ["allowSkip"],
    call: (options) => setAttnSpecOnAttention({ attn: new SelfAttention() }, AttnMaskSpec.causal(4), options),
  },
  // Device functions check their options before loading any library, so these run without a GPU.
  {
    name: "toDevice",
    field: "opts",
    keys: ["libraryPath", "stream"],
    call: (options) => toDevice(q3, options),
  },
  {
    name: "emptyDevice",
    field: "opts",
    keys: ["libraryPath"],
    call: (options) => emptyDevice([2], "bfloat16", options),
  },
  {
    name: "synchronize",
    field: "opts",
    keys: ["libraryPath", "stream"],
    call: (options) => synchronize(options),
  },
  {
    name: "cudaForward (direct ffi callers)",
    field: "opts",
    keys: ["softmaxScale", "softcap", "deterministic", "libraryPath", "stream", "outputs"],
    call: (options) => cudaForward(q3, q3, q3, key, options),
  },
  {
    name: "cudaBackward (direct ffi callers)",
    field: "opts",
    keys: ["softmaxScale", "softcap", "deterministic", "libraryPath", "stream", "outputs"],
    call: (options) => cudaBackward(q3, q3, q3, q3, q3, lse, key, options),
  },
];

/** Runs the call (sync or async) and returns the MagiAttnInputError it raised. */
async function inputError(call: () => unknown): Promise<MagiAttnInputError> {
  try {
    await call();
  } catch (error) {
    assert.ok(error instanceof MagiAttnInputError, `expected MagiAttnInputError, got ${error}`);
    return error;
  }
  assert.fail("no error was thrown");
}

function fieldOf(entry: OptionsEntry, name: string): string {
  return entry.field === "" ? name : `${entry.field}.${name}`;
}

Deno.test("every options object of the public API rejects an unknown key, listing the valid ones (main ignored some)", async (t) => {
  for (const entry of ENTRIES) {
    await t.step(entry.name, async () => {
      const error = await inputError(() => entry.call({ bogusOption: 1 }));
      assert.equal(error.field, fieldOf(entry, "bogusOption"));
      assert.match(error.message, /so it would be ignored/);
      assert.match(error.message, new RegExp(`the valid keys are ${entry.keys.join(", ")}\\.$`));
      assert.doesNotMatch(error.message, /Unrecognized|invalid_type|ZodError/, "no raw zod text");
    });
  }
});

/** A random one-edit misspelling of `word`: a dropped, doubled, swapped or recased letter. */
function misspell(word: string, random: () => number): string {
  const at = Math.floor(random() * word.length);
  switch (Math.floor(random() * 4)) {
    case 0:
      return word.length > 3 ? word.slice(0, at) + word.slice(at + 1) : word + "x";
    case 1:
      return word.slice(0, at) + word[at] + word.slice(at);
    case 2:
      return at + 1 < word.length && word[at] !== word[at + 1]
        ? word.slice(0, at) + word[at + 1] + word[at] + word.slice(at + 2)
        : word + "s";
    default:
      return word.toLowerCase() !== word ? word.toLowerCase() : word.toUpperCase();
  }
}

/** Whether `a` and `b` are one dropped, inserted, replaced or swapped letter apart, or equal ignoring case. */
function oneEditApart(a: string, b: string): boolean {
  const x = a.toLowerCase(), y = b.toLowerCase();
  if (x === y) return true;
  if (Math.abs(x.length - y.length) > 1) return false;
  let start = 0;
  while (start < x.length && start < y.length && x[start] === y[start]) start++;
  const rest = (skipX: number, skipY: number) => x.slice(start + skipX) === y.slice(start + skipY);
  const swapped = x[start] === y[start + 1] && x[start + 1] === y[start] && rest(2, 2);
  return rest(1, 0) || rest(0, 1) || rest(1, 1) || swapped;
}

Deno.test("fuzz: misspellings of every valid key are rejected with a did-you-mean naming that key", async () => {
  const random = seededRandom(20250611);
  let cases = 0;
  for (let round = 0; round < 12; round++) {
    for (const entry of ENTRIES) {
      for (const valid of entry.keys) {
        const typo = misspell(valid, random);
        if (entry.keys.includes(typo)) continue;
        const error = await inputError(() => entry.call({ [typo]: 1 }));
        assert.equal(error.field, fieldOf(entry, typo), `${entry.name}: ${typo}`);
        // The key it came from, or another valid key just as close (`Ranges` is one edit from qRanges and kRanges).
        const suggested = /did you mean `([^`]+)`/.exec(error.message)?.[1];
        assert.ok(
          suggested === valid || (suggested !== undefined && oneEditApart(typo, suggested)),
          `${entry.name}: ${typo} (from ${valid}) → ${suggested}`,
        );
        cases++;
      }
    }
  }
  assert.ok(cases > 700, `${cases} misspellings`);
});

Deno.test("item 5 as reported: { scale: 100 } and { casual: false } are refused, not ignored", async () => {
  const forward = await inputError(() => flexFlashAttnForward(q3, q3, q3, key, { scale: 100 } as never));
  assert.equal(forward.field, "opts.scale");
  assert.match(forward.message, /did you mean `softmaxScale`/);
  const varlen = await inputError(() => AttnMaskSpec.varlen([4], { casual: false } as never));
  assert.equal(varlen.field, "options.casual");
  assert.match(varlen.message, /did you mean `causal`/);
});

Deno.test("a frozen options object is checked once and reused; a changed unfrozen one is checked again", async () => {
  const frozen = Object.freeze({ softcap: 30, backend: "cpu" as const });
  await flexFlashAttnForward(q3, q3, q3, key, frozen);
  await flexFlashAttnForward(q3, q3, q3, key, frozen);
  const mutable: Record<string, unknown> = { softcap: 30, backend: "cpu" };
  await flexFlashAttnForward(q3, q3, q3, key, mutable);
  mutable.softcap = -1;
  const error = await inputError(() => flexFlashAttnForward(q3, q3, q3, key, mutable));
  assert.equal(error.field, "opts.softcap");
});
