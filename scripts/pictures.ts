/**
 * Writes the README's mask pictures: `docs/<builder>.svg`, one worked example per AttnMaskSpec builder,
 * drawn with maskToSvg.
 *
 * Usage: `deno run --allow-read --allow-write scripts/pictures.ts [--out DIR]` (default: `docs/`).
 * @module
 */

import { AttnMaskSpec } from "../lib/masks/spec.ts";
import { maskToSvg } from "../lib/masks/svg.ts";

/** One picture: the file's base name, its heading and the spec it draws. */
interface Picture {
  readonly name: string;
  readonly title: string;
  readonly spec: AttnMaskSpec;
}

const PICTURES: readonly Picture[] = [
  { name: "causal", title: "AttnMaskSpec.causal(12)", spec: AttnMaskSpec.causal(12) },
  { name: "full", title: "AttnMaskSpec.full(12)", spec: AttnMaskSpec.full(12) },
  {
    name: "varlen",
    title: "AttnMaskSpec.varlen([5, 3, 4]): packed documents",
    spec: AttnMaskSpec.varlen([5, 3, 4]),
  },
  {
    name: "slidingWindow",
    title: "AttnMaskSpec.slidingWindow(12, { left: 2, right: 3 })",
    spec: AttnMaskSpec.slidingWindow(12, { left: 2, right: 3 }),
  },
  {
    name: "prefixTree",
    title: "AttnMaskSpec.prefixTree([4, 2, 3, 3], [[0, 1], [0, 2], [0, 3]])",
    spec: AttnMaskSpec.prefixTree([4, 2, 3, 3], [[0, 1], [0, 2], [0, 3]]),
  },
  { name: "prefixLM", title: "AttnMaskSpec.prefixLM(4, 12)", spec: AttnMaskSpec.prefixLM(4, 12) },
  { name: "blockCausal", title: "AttnMaskSpec.blockCausal(4, 12)", spec: AttnMaskSpec.blockCausal(4, 12) },
  {
    name: "fromRanges",
    title: "AttnMaskSpec.fromRanges: all four slice types",
    spec: AttnMaskSpec.fromRanges({
      qRanges: [[0, 4], [4, 8], [4, 8], [8, 12], [8, 12]],
      kRanges: [[0, 4], [0, 4], [4, 10], [0, 4], [4, 12]],
      maskTypes: ["full", "causal", "bi_causal", "full", "inv_causal"],
      totalSeqlenQ: 12,
      totalSeqlenK: 12,
    }),
  },
];

function outputDirectory(args: readonly string[]): string {
  const index = args.indexOf("--out");
  if (index < 0) return new URL("../docs/", import.meta.url).pathname;
  const value = args[index + 1];
  if (!value) throw new Error("--out needs a directory");
  return value.endsWith("/") ? value : `${value}/`;
}

if (import.meta.main) {
  const directory = outputDirectory(Deno.args);
  Deno.mkdirSync(directory, { recursive: true });
  for (const picture of PICTURES) {
    const path = `${directory}${picture.name}.svg`;
    const svg = maskToSvg(picture.spec, { title: picture.title, cellSize: 18 });
    Deno.writeTextFileSync(path, svg);
    console.log(`wrote ${path} (${svg.length} bytes)`);
  }
}
