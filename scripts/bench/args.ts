/**
 * The command line of `deno task bench`.
 * @module
 */

import { MagiAttnInputError } from "../../lib/core/errors.ts";
import { allCases } from "./cases.ts";
import { type InputDistribution, parseInputDistribution } from "./inputs.ts";

/** Parsed command line of the benchmark. */
export interface BenchArgs {
  /** Only the main masks at 16k. */
  quick: boolean;
  /** Only these case names (empty: all selected by `quick`). */
  cases: string[];
  /** Do not run `scripts/bench/peers.py`. */
  skipPeers: boolean;
  /** Which peers `scripts/bench/peers.py` runs. */
  peers: string[];
  /** No GPU: simulated timings, everything else real. */
  dryRun: boolean;
  /** Where the results go; default `bench/` (a temp dir for `--dry-run`). */
  outDir?: string;
  /** Input distribution of our kernels and the peers (`--inputs`, default `randn`). */
  inputs: InputDistribution;
  /** Print the usage and exit. */
  help: boolean;
}

/** The peers `scripts/bench/peers.py` knows. */
export const PEER_NAMES: readonly string[] = Object.freeze(["cudnn", "flash", "flex"]);

/** Usage text of `deno task bench`. */
export const USAGE = `usage: deno task bench [--quick] [--cases a,b] [--skip-peers] [--peers cudnn,flash,flex]
                       [--dry-run] [--out-dir DIR] [--inputs randn|hashed]
  --quick       only the main masks at S = 16k
  --cases a,b   only these cases (names: ${allCases().map((item) => item.name).join(", ")})
  --skip-peers  do not run scripts/bench/peers.py (PyTorch cuDNN / flash SDPA and FlexAttention)
  --peers list  peers to run (default cudnn,flash,flex)
  --dry-run     no GPU: simulated timings; still writes the JSON and SVG (into a temp dir unless --out-dir)
  --out-dir DIR where results-<gpu>-<date>.json/.svg go (default bench/)
  --inputs d    input values of ours and the peers alike: randn (standard normal, default) or hashed
                (the bounded pools of the runs before 2026-12, for before/after comparisons)
env: PYTHON (default python3) runs the peers; MAGI_FFA_LIBRARY picks the CUDA library.`;

/** Parses the benchmark's flags; throws {@linkcode MagiAttnInputError} naming a bad flag. */
export function parseBenchArgs(argv: readonly string[]): BenchArgs {
  const args: BenchArgs = {
    quick: false,
    cases: [],
    skipPeers: false,
    peers: [...PEER_NAMES],
    dryRun: false,
    inputs: "randn",
    help: false,
  };
  const valueOf = (index: number, flag: string): string => {
    const value = argv[index + 1];
    if (value === undefined || value.startsWith("--")) {
      throw new MagiAttnInputError(flag, "has no value", `write ${flag} VALUE`);
    }
    return value;
  };
  for (let index = 0; index < argv.length; index++) {
    const raw = argv[index];
    const [flag, inline] = raw.includes("=")
      ? [raw.slice(0, raw.indexOf("=")), raw.slice(raw.indexOf("=") + 1)]
      : [
        raw,
        undefined,
      ];
    const take = (): string => {
      if (inline !== undefined) return inline;
      const value = valueOf(index, flag);
      index++;
      return value;
    };
    switch (flag) {
      case "--quick":
        args.quick = true;
        break;
      case "--skip-peers":
        args.skipPeers = true;
        break;
      case "--dry-run":
        args.dryRun = true;
        break;
      case "--help":
      case "-h":
        args.help = true;
        break;
      case "--cases":
        args.cases = take().split(",").map((name) => name.trim()).filter((name) => name !== "");
        break;
      case "--out-dir":
        args.outDir = take();
        break;
      case "--inputs":
        args.inputs = parseInputDistribution(take());
        break;
      case "--peers": {
        const peers = take().split(",").map((name) => name.trim()).filter((name) => name !== "");
        const unknown = peers.filter((name) => !PEER_NAMES.includes(name));
        if (unknown.length > 0 || peers.length === 0) {
          throw new MagiAttnInputError(
            "--peers",
            `names ${unknown.length ? `unknown peer(s) ${unknown.join(", ")}` : "no peer"}`,
            `use a comma-separated subset of ${PEER_NAMES.join(",")} (or --skip-peers)`,
          );
        }
        args.peers = peers;
        break;
      }
      default:
        throw new MagiAttnInputError(
          raw,
          "is not a flag of the benchmark",
          "use --quick, --cases, --skip-peers, --peers, --dry-run, --out-dir, --inputs or --help",
        );
    }
  }
  return args;
}
