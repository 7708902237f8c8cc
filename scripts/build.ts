/**
 * Builds the CUDA FFA library (`libmagi_ffa.so`) from the `.cu` files under `ffi/cuda/` with nvcc.
 *
 * CLI: `deno task build [--out-dir DIR] [--selftest] [--experiments] [--cache] [--ptxas-verbose] [--no-sm80]`.
 * Env: NVCC (the compiler), MAGI_FFA_NVCC_FLAGS (extra nvcc flags for the library, for tuning).
 * Without nvcc it prints why and exits 0 (the CPU reference stays in use); a compile failure exits 1.
 *
 * `--experiments` builds an experiment library (`-DMAGI_FFA_EXPERIMENTS=1`: timing ablations whose results
 * are wrong, read from `MAGI_FFA_SM90_BWD_ABLATE`) into `build/experiments/` unless `--out-dir` is given, never
 * into the per-user cache: the library the loader finds by itself is always the default one.
 *
 * @module
 */

import denoConfig from "../deno.json" with { type: "json" };

/**
 * The CUDA sources, relative to `ffi/cuda/`, that make up the library (used when fetching them remotely; a
 * local build compiles every `.cu` under `ffi/cuda/`, and tests/build_test.ts checks the two agree).
 */
export const LIBRARY_SOURCES: readonly string[] = Object.freeze([
  // The C ABI, and the choice of kernels.
  "magi_ffa.cu",
  "dispatch.cu",
  // Shared by every kernel family.
  "common/backward_prepost.cu",
  "common/device_query.cu",
  "common/env.cu",
  // mma.sync kernels (any sm_80+ GPU).
  "sm80/forward.cu",
  "sm80/backward.cu",
  "sm80/backward_dkdv.cu",
  "sm80/backward_dq.cu",
  // Hopper kernels (sm_90a: wgmma, TMA).
  "sm90/forward.cu",
  "sm90/backward.cu",
  "sm90/host.cu",
]);

/** Headers the sources include, relative to `ffi/cuda/` (the self-test's own headers are not among them). */
export const LIBRARY_HEADERS: readonly string[] = Object.freeze([
  "magi_ffa.h",
  "dispatch.cuh",
  "plan.cuh",
  "common/backward_prepost.cuh",
  "common/device.cuh",
  "common/device_query.cuh",
  "common/env.cuh",
  "common/launch.cuh",
  "common/mask.cuh",
  "common/params.cuh",
  "common/shapes.cuh",
  "common/walkers.cuh",
  "sm80/backward.cuh",
  "sm80/backward_pointwise.cuh",
  "sm80/forward.cuh",
  "sm90/backward.cuh",
  "sm90/forward.cuh",
  "sm90/forward_layout.cuh",
  "sm90/host.cuh",
  "sm90/ptx.cuh",
  "sm90/watchdog.cuh",
  "sm90/wgmma.cuh",
]);

/**
 * The standalone GPU self-test program and its headers, relative to the package root. It is built from a
 * local checkout only (`tests/` is not part of the published package).
 */
export const SELFTEST_SOURCE = "tests/cuda/selftest.cu";

/** Headers of the self-test (next to {@linkcode SELFTEST_SOURCE}), relative to the package root. */
export const SELFTEST_HEADERS: readonly string[] = Object.freeze(["tests/cuda/selftest_sm90.cuh"]);

/** The `-D` flag of an experiment build (see `--experiments`). */
export const EXPERIMENTS_FLAG = "-DMAGI_FFA_EXPERIMENTS=1";

/** File name of the built library. */
export const LIBRARY_FILE_NAME = "libmagi_ffa.so";

/** File name of the built self-test executable. */
export const SELFTEST_FILE_NAME = "magi_ffa_selftest";

/** Options of {@linkcode buildLibrary}. */
export interface BuildOptions {
  /** Output directory; default `build/` next to the package root, or the per-user cache with `cache`. */
  outDir?: string;
  /** Also build the self-test executable `magi_ffa_selftest` next to the library (local checkout only). */
  selftest?: boolean;
  /**
   * Build the experiment library (`-DMAGI_FFA_EXPERIMENTS=1`: wrong-result timing ablations compiled in);
   * default output `build/experiments/`. Refused together with `cache`.
   */
  experiments?: boolean;
  /** Build into `$XDG_CACHE_HOME/magi-attn/<version>/` (or `~/.cache/...`); reuse it when up to date. */
  cache?: boolean;
  /** Print nvcc's register / shared-memory / spill report (`-Xptxas -v`). */
  ptxasVerbose?: boolean;
  /** Also emit sm_80 code (A100) besides sm_90a; default true. */
  sm80?: boolean;
  /** nvcc to use; default: env NVCC, then PATH, then /usr/local/cuda/bin/nvcc. */
  nvcc?: string;
  /** Progress messages (default: console.error). */
  log?: (message: string) => void;
}

/** Thrown by {@linkcode buildLibrary} when no nvcc can be found. */
export class NvccNotFoundError extends Error {
  /** Creates the error, listing where nvcc was looked for. */
  constructor(searched: readonly string[]) {
    super(
      `nvcc not found (looked at: ${searched.join(", ")}); the CUDA library is not built and the CPU ` +
        `reference stays in use. Install the CUDA toolkit or set NVCC=/path/to/nvcc.`,
    );
    this.name = "NvccNotFoundError";
  }
}

/** Thrown by {@linkcode buildLibrary} when nvcc fails. */
export class BuildFailedError extends Error {
  /** Creates the error from the failing command and its output. */
  constructor(command: readonly string[], output: string) {
    super(`nvcc failed: ${command.join(" ")}\n${output}`);
    this.name = "BuildFailedError";
  }
}

const PACKAGE_VERSION: string = (denoConfig as { version?: string }).version ?? "0.0.0";

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Finds nvcc: `explicit`, then env NVCC, then each PATH entry, then /usr/local/cuda/bin/nvcc. */
export async function findNvcc(explicit?: string): Promise<string> {
  const searched: string[] = [];
  const candidates: string[] = [];
  if (explicit) candidates.push(explicit);
  const fromEnv = Deno.env.get("NVCC");
  if (fromEnv) candidates.push(fromEnv);
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir) candidates.push(`${dir}/nvcc`);
  }
  candidates.push("/usr/local/cuda/bin/nvcc");
  for (const candidate of candidates) {
    searched.push(candidate);
    if (await isFile(candidate)) return candidate;
  }
  throw new NvccNotFoundError(searched);
}

function packageRootUrl(): URL {
  return new URL("../", import.meta.url);
}

function defaultCacheDir(): string {
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME");
  const base = xdg && xdg.length > 0 ? xdg : home ? `${home}/.cache` : undefined;
  if (!base) throw new Error("--cache needs XDG_CACHE_HOME or HOME to locate the per-user cache directory");
  return `${base}/magi-attn/${PACKAGE_VERSION}`;
}

/** Every file under `dir` (recursively) whose name passes `keep`, as paths relative to `dir`, sorted. */
async function listFiles(dir: string, keep: (name: string) => boolean, prefix = ""): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(`${dir}/${prefix}`)) {
    const relative = `${prefix}${entry.name}`;
    if (entry.isDirectory) found.push(...await listFiles(dir, keep, `${relative}/`));
    else if (entry.isFile && keep(entry.name)) found.push(relative);
  }
  return found.sort();
}

/** Copies (local) or downloads (remote module) the CUDA sources into a directory nvcc can read. */
async function materializeSources(workDir: string): Promise<{ sourceDir: string; sources: string[] }> {
  const cudaUrl = new URL("ffi/cuda/", packageRootUrl());
  if (cudaUrl.protocol === "file:") {
    const sourceDir = decodeURIComponent(cudaUrl.pathname).replace(/\/$/, "");
    return { sourceDir, sources: await listFiles(sourceDir, (name) => name.endsWith(".cu")) };
  }
  // Remote module (e.g. JSR over https): fetch the known file list next to this module.
  const sourceDir = `${workDir}/src`;
  for (const name of [...LIBRARY_SOURCES, ...LIBRARY_HEADERS]) {
    const response = await fetch(new URL(name, cudaUrl));
    if (!response.ok) throw new Error(`fetching ${new URL(name, cudaUrl)} failed: HTTP ${response.status}`);
    const path = `${sourceDir}/${name}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeFile(path, new Uint8Array(await response.arrayBuffer()));
  }
  return { sourceDir, sources: [...LIBRARY_SOURCES] };
}

async function hashSources(
  sourceDir: string,
  names: readonly string[],
  flags: readonly string[],
): Promise<string> {
  const parts: Uint8Array[] = [new TextEncoder().encode(flags.join(" "))];
  const headers = await listFiles(sourceDir, (name) => name.endsWith(".cuh") || name.endsWith(".h"));
  const all = [...names, ...headers].sort();
  for (const name of all) {
    parts.push(new TextEncoder().encode(name));
    parts.push(await Deno.readFile(`${sourceDir}/${name}`));
  }
  const total = parts.reduce((sum, part) => sum + part.length, 0);
  const joined = new Uint8Array(total);
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", joined));
  return Array.from(digest, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

async function run(command: string[], log: (message: string) => void, echoStderr: boolean): Promise<string> {
  const output = await new Deno.Command(command[0], {
    args: command.slice(1),
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const text = new TextDecoder().decode(output.stdout) + new TextDecoder().decode(output.stderr);
  if (!output.success) throw new BuildFailedError(command, text);
  if (echoStderr && text.trim().length > 0) log(text.trimEnd());
  return text;
}

/** Runs `tasks` with at most `limit` in flight. */
async function runPool<T>(tasks: (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  const workers = Array.from({ length: Math.max(1, Math.min(limit, tasks.length)) }, async () => {
    while (next < tasks.length) {
      const index = next++;
      results[index] = await tasks[index]();
    }
  });
  await Promise.all(workers);
  return results;
}

/**
 * Compiles the CUDA FFA library and returns the path of `libmagi_ffa.so`.
 *
 * @throws {NvccNotFoundError} when no nvcc is found.
 * @throws {BuildFailedError} when nvcc reports an error.
 */
export async function buildLibrary(options: BuildOptions = {}): Promise<string> {
  const log = options.log ?? ((message: string) => console.error(message));
  if (options.experiments && options.cache) {
    throw new Error(
      "--experiments cannot build into the per-user cache (the loader would pick up a library whose " +
        "ablations give wrong results). Fix: drop --cache, or pass --out-dir.",
    );
  }
  const nvcc = await findNvcc(options.nvcc);
  const rootUrl = packageRootUrl();
  const localRoot = rootUrl.protocol === "file:"
    ? decodeURIComponent(rootUrl.pathname).replace(/\/$/, "")
    : undefined;
  if (options.selftest && localRoot === undefined) {
    throw new Error(
      "--selftest needs a local checkout (its source, tests/cuda/, is not in the published package). " +
        "Fix: clone the repository and run `deno task build --selftest` there.",
    );
  }
  const outDir = options.outDir ??
    (options.experiments
      ? `${localRoot ?? "."}/build/experiments`
      : options.cache || localRoot === undefined
      ? defaultCacheDir()
      : `${localRoot}/build`);
  await Deno.mkdir(outDir, { recursive: true });

  const gencode = ["-gencode=arch=compute_90a,code=sm_90a"];
  if (options.sm80 ?? true) gencode.push("-gencode=arch=compute_80,code=sm_80");
  const compileFlags = [
    "-O3",
    "-std=c++17",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "-Xcompiler",
    "-fPIC,-fvisibility=hidden,-Wall,-Wextra",
    "--Werror",
    "all-warnings",
    ...gencode,
    ...(options.ptxasVerbose ? ["-Xptxas", "-v"] : []),
    ...(options.experiments ? [EXPERIMENTS_FLAG] : []),
    // Tuning experiments, e.g. MAGI_FFA_NVCC_FLAGS="-DMAGI_FFA_DKV_SUB_M_D128=16".
    ...(Deno.env.get("MAGI_FFA_NVCC_FLAGS") ?? "").split(/\s+/).filter((flag) => flag.length > 0),
  ];

  const workDir = await Deno.makeTempDir({ prefix: "magi-ffa-build-" });
  try {
    const { sourceDir, sources } = await materializeSources(workDir);
    const libraryPath = `${outDir}/${LIBRARY_FILE_NAME}`;
    const stampPath = `${outDir}/${LIBRARY_FILE_NAME}.sha256`;
    const hash = await hashSources(sourceDir, sources, compileFlags);
    let upToDate = false;
    if (options.cache && (await isFile(libraryPath)) && (await isFile(stampPath))) {
      upToDate = (await Deno.readTextFile(stampPath)).trim() === hash;
    }

    if (!upToDate) {
      log(`building ${libraryPath} with ${nvcc} (${sources.join(", ")})`);
      // One object per source, named after its path (sm80/forward.cu -> sm80_forward.o).
      const objects = sources.map((name) => `${workDir}/${name.replace(/\.cu$/, ".o").replaceAll("/", "_")}`);
      const jobs = Math.max(1, navigator.hardwareConcurrency ?? 2);
      await runPool(
        sources.map((name, index) => () =>
          // Includes are relative to ffi/cuda/ ("common/mask.cuh"); -I is kept out of the hashed flags, since a
          // remote build's source directory is a fresh temporary one each time.
          run(
            [nvcc, ...compileFlags, `-I${sourceDir}`, "-c", `${sourceDir}/${name}`, "-o", objects[index]],
            log,
            true,
          )
        ),
        jobs,
      );
      const versionScript = `${workDir}/magi_ffa.version`;
      await Deno.writeTextFile(versionScript, "{\n  global: magi_ffa_*;\n  local: *;\n};\n");
      const tmpLibrary = `${libraryPath}.tmp-${Deno.pid}`;
      await run(
        [
          nvcc,
          "-shared",
          "-cudart",
          "static",
          ...gencode,
          "-Xlinker",
          `--version-script=${versionScript}`,
          ...objects,
          "-o",
          tmpLibrary,
        ],
        log,
        true,
      );
      await Deno.rename(tmpLibrary, libraryPath); // atomic: a concurrent loader never sees half a file
      await Deno.writeTextFile(stampPath, hash + "\n");
    }

    if (options.selftest) {
      const selftestPath = `${outDir}/${SELFTEST_FILE_NAME}`;
      log(`building ${selftestPath}`);
      await run(
        [
          nvcc,
          "-O2",
          "-std=c++17",
          "-Xcompiler",
          "-Wall,-Wextra,-pthread",
          "--Werror",
          "all-warnings",
          "-cudart",
          "none",
          "-x",
          "c++", // host-only program: it talks to the GPU through libmagi_ffa.so
          `-I${sourceDir}`,
          `${localRoot}/${SELFTEST_SOURCE}`,
          "-o",
          selftestPath,
          `-L${outDir}`,
          "-lmagi_ffa",
          "-Xlinker",
          "-rpath,$ORIGIN",
          "-lpthread",
        ],
        log,
        true,
      );
    }
    return libraryPath;
  } finally {
    await Deno.remove(workDir, { recursive: true }).catch(() => {});
  }
}

function parseArgs(args: readonly string[]): BuildOptions {
  const options: BuildOptions = {};
  for (let index = 0; index < args.length; index++) {
    const arg = args[index];
    if (arg === "--out-dir") {
      const value = args[++index];
      if (!value) throw new Error("--out-dir needs a directory, e.g. --out-dir build");
      options.outDir = value;
    } else if (arg.startsWith("--out-dir=")) {
      options.outDir = arg.slice("--out-dir=".length);
    } else if (arg === "--selftest") {
      options.selftest = true;
    } else if (arg === "--experiments") {
      options.experiments = true;
    } else if (arg === "--cache") {
      options.cache = true;
    } else if (arg === "--ptxas-verbose") {
      options.ptxasVerbose = true;
    } else if (arg === "--no-sm80") {
      options.sm80 = false;
    } else if (arg === "--help" || arg === "-h") {
      console.log(
        "usage: deno task build [--out-dir DIR] [--selftest] [--experiments] [--cache] [--ptxas-verbose] " +
          "[--no-sm80]\n  --experiments  experiment library (-DMAGI_FFA_EXPERIMENTS=1, wrong-result ablations) " +
          "into build/experiments/",
      );
      Deno.exit(0);
    } else {
      throw new Error(`unknown argument ${arg}; see --help`);
    }
  }
  return options;
}

if (import.meta.main) {
  let options: BuildOptions;
  try {
    options = parseArgs(Deno.args);
  } catch (error) {
    console.error((error as Error).message);
    Deno.exit(2);
  }
  try {
    const path = await buildLibrary(options);
    console.log(path);
  } catch (error) {
    if (error instanceof NvccNotFoundError) {
      console.error(error.message);
      Deno.exit(0);
    }
    console.error((error as Error).message);
    Deno.exit(1);
  }
}
