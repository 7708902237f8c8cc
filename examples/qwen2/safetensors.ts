/**
 * A safetensors reader and writer: an 8-byte little-endian header length, a JSON header mapping tensor
 * names to `{ dtype, shape, data_offsets }` (plus an optional `__metadata__` of strings), then the raw
 * little-endian tensor bytes. Reads BF16, F16 and F32 tensors into float32; every inconsistency (a short
 * file, a header that is not JSON, offsets that overlap, leave holes or run past the end, a byte count that
 * does not match the shape) is a {@linkcode CheckpointError} naming the file and the tensor.
 * @module
 */

import { float32ToBf16 } from "../../mod.ts";
import { CheckpointError } from "./errors.ts";

/** The tensor element types this reader decodes. */
export type SafetensorsDType = "BF16" | "F16" | "F32";

const ITEM_SIZE: Record<SafetensorsDType, number> = { BF16: 2, F16: 2, F32: 4 };

/** Header bigger than this is refused (the format's own limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

/** One decoded tensor. */
export interface SafetensorsTensor {
  /** Name in the file, e.g. `"model.layers.0.self_attn.q_proj.weight"`. */
  readonly name: string;
  /** Element type as stored. */
  readonly dtype: SafetensorsDType;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** The values, widened to float32 (exactly: bf16 and f16 are subsets of f32). */
  readonly data: Float32Array;
}

/** A parsed safetensors file. */
export interface SafetensorsFile {
  /** Path (or label) the file was read from, used in error messages. */
  readonly file: string;
  /** The tensors by name, in header order. */
  readonly tensors: ReadonlyMap<string, SafetensorsTensor>;
  /** The header's `__metadata__` (string to string), or `{}`. */
  readonly metadata: Readonly<Record<string, string>>;
}

/** A tensor to write: float values, stored rounded to `dtype` (nearest even). */
export interface SafetensorsInput {
  /** Name in the file. */
  name: string;
  /** Element type to store. */
  dtype: SafetensorsDType;
  /** Dimensions, outermost first. */
  shape: readonly number[];
  /** Row-major values. */
  values: ArrayLike<number>;
}

function describeJson(value: unknown): string {
  if (value === undefined) return "missing";
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function decode(bytes: Uint8Array, dtype: SafetensorsDType, count: number): Float32Array {
  const out = new Float32Array(count);
  if (dtype === "BF16") {
    const bits = new Uint32Array(out.buffer);
    for (let index = 0; index < count; index++) {
      bits[index] = (bytes[2 * index] | (bytes[2 * index + 1] << 8)) << 16;
    }
  } else if (dtype === "F16") {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let index = 0; index < count; index++) out[index] = view.getFloat16(2 * index, true);
  } else if (littleEndian) {
    new Uint8Array(out.buffer).set(bytes); // a copy: the result owns its (aligned) buffer
  } else {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let index = 0; index < count; index++) out[index] = view.getFloat32(4 * index, true);
  }
  return out;
}

interface HeaderEntry {
  name: string;
  dtype: SafetensorsDType;
  shape: number[];
  begin: number;
  end: number;
}

function checkEntry(name: string, raw: unknown, file: string): HeaderEntry {
  const fail = (problem: string, fix: string): never => {
    throw new CheckpointError({ file, tensor: name }, problem, fix);
  };
  const resave = "re-save the checkpoint with safetensors (e.g. save_pretrained)";
  if (raw === null || typeof raw !== "object" || Array.isArray(raw)) {
    fail(`has header entry ${describeJson(raw)}, not an object`, resave);
  }
  const entry = raw as Record<string, unknown>;
  const dtype = entry.dtype;
  if (typeof dtype !== "string" || !(dtype in ITEM_SIZE)) {
    fail(
      `has dtype ${describeJson(dtype)}, which this reader does not decode`,
      "store the weights as BF16, F16 or F32 (e.g. model.to(torch.bfloat16).save_pretrained(dir))",
    );
  }
  const shape = entry.shape;
  if (!Array.isArray(shape) || shape.some((dim) => !Number.isSafeInteger(dim) || dim < 0)) {
    fail(`has shape ${describeJson(shape)}, not a list of non-negative integers`, resave);
  }
  const offsets = entry.data_offsets;
  if (
    !Array.isArray(offsets) || offsets.length !== 2 ||
    offsets.some((offset) => !Number.isSafeInteger(offset) || offset < 0) || offsets[0] > offsets[1]
  ) {
    fail(`has data_offsets ${describeJson(offsets)}, not [begin, end] with 0 ≤ begin ≤ end`, resave);
  }
  const [begin, end] = offsets as number[];
  const typed = dtype as SafetensorsDType;
  const count = (shape as number[]).reduce((product, dim) => product * dim, 1);
  const expected = count * ITEM_SIZE[typed];
  if (end - begin !== expected) {
    fail(
      `holds ${end - begin} bytes (data_offsets [${begin}, ${end}]) but shape [${
        (shape as number[]).join(", ")
      }] of ${typed} needs ${expected}`,
      resave,
    );
  }
  return { name, dtype: typed, shape: shape as number[], begin, end };
}

/**
 * Parses safetensors bytes. `file` labels errors. Validates the whole header (and that the tensors tile
 * the data section exactly) before decoding anything, so a bad file never yields a partial result.
 */
export function parseSafetensors(bytes: Uint8Array, file: string): SafetensorsFile {
  const resave = "re-save or re-copy the file; it must be a complete safetensors file";
  if (bytes.length < 8) {
    throw new CheckpointError(
      { file, field: "header length" },
      `is ${bytes.length} bytes long, shorter than the 8-byte header length, so the file is truncated`,
      resave,
    );
  }
  const headerLength = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (headerLength > BigInt(Math.min(bytes.length - 8, MAX_HEADER_BYTES))) {
    throw new CheckpointError(
      { file, field: "header length" },
      `says the JSON header has ${headerLength} bytes, but the file has ${bytes.length - 8} bytes after ` +
        `the length${headerLength > BigInt(MAX_HEADER_BYTES) ? " (and the format allows 100 MB)" : ""}: ` +
        "the file is truncated or not a safetensors file",
      resave,
    );
  }
  const dataStart = 8 + Number(headerLength);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch (error) {
    throw new CheckpointError(
      { file, field: "header" },
      `is not valid UTF-8 JSON (${error instanceof Error ? error.message : String(error)})`,
      resave,
    );
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new CheckpointError({ file, field: "header" }, `is ${describeJson(header)}, not an object`, resave);
  }
  const entries: HeaderEntry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (
        raw === null || typeof raw !== "object" || Array.isArray(raw) ||
        Object.values(raw).some((value) => typeof value !== "string")
      ) {
        throw new CheckpointError(
          { file, field: "__metadata__" },
          `is ${describeJson(raw)}, not an object of strings`,
          resave,
        );
      }
      metadata = { ...(raw as Record<string, string>) };
      continue;
    }
    entries.push(checkEntry(name, raw, file));
  }
  // The tensors must tile the data section: sorted by offset, each starts where the previous ends.
  const dataLength = bytes.length - dataStart;
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const entry of byOffset) {
    if (entry.end > dataLength) {
      throw new CheckpointError(
        { file, tensor: entry.name },
        `ends at byte ${entry.end} of the data section, but the file has only ${dataLength} data bytes: ` +
          "the file is truncated",
        resave,
      );
    }
    if (entry.begin !== cursor) {
      throw new CheckpointError(
        { file, tensor: entry.name },
        entry.begin < cursor
          ? `starts at byte ${entry.begin}, inside the bytes of another tensor (which end at ${cursor})`
          : `starts at byte ${entry.begin}, leaving bytes ${cursor}–${entry.begin} unused`,
        resave,
      );
    }
    cursor = entry.end;
  }
  if (cursor !== dataLength) {
    throw new CheckpointError(
      { file, field: "data" },
      `has ${dataLength - cursor} bytes after the last tensor that no header entry covers`,
      resave,
    );
  }
  const tensors = new Map<string, SafetensorsTensor>();
  for (const entry of entries) {
    const count = (entry.end - entry.begin) / ITEM_SIZE[entry.dtype];
    const raw = bytes.subarray(dataStart + entry.begin, dataStart + entry.end);
    tensors.set(entry.name, {
      name: entry.name,
      dtype: entry.dtype,
      shape: Object.freeze([...entry.shape]),
      data: decode(raw, entry.dtype, count),
    });
  }
  return { file, tensors, metadata };
}

/** Reads and parses a safetensors file; a missing or unreadable file is a {@linkcode CheckpointError}. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (error) {
    throw new CheckpointError(
      { file: path },
      `cannot be read (${error instanceof Error ? error.message : String(error)})`,
      "check the path, and that the checkpoint folder holds its safetensors file(s)",
    );
  }
  return parseSafetensors(bytes, path);
}

function encodeValues(input: SafetensorsInput): Uint8Array {
  const count = input.values.length;
  if (input.dtype === "F32") {
    const out = new Uint8Array(count * 4);
    const view = new DataView(out.buffer);
    for (let index = 0; index < count; index++) view.setFloat32(4 * index, input.values[index], true);
    return out;
  }
  const out = new Uint8Array(count * 2);
  const view = new DataView(out.buffer);
  if (input.dtype === "F16") {
    for (let index = 0; index < count; index++) view.setFloat16(2 * index, input.values[index], true);
  } else {
    const bits = float32ToBf16(input.values);
    for (let index = 0; index < count; index++) view.setUint16(2 * index, bits[index], true);
  }
  return out;
}

/**
 * Encodes tensors (in the given order) and optional string metadata as a safetensors file. The header is
 * padded with spaces to a multiple of 8 bytes, as the format recommends.
 */
export function encodeSafetensors(
  inputs: readonly SafetensorsInput[],
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const buffers: Uint8Array[] = [];
  let offset = 0;
  for (const input of inputs) {
    const count = input.shape.reduce((product, dim) => product * dim, 1);
    if (count !== input.values.length || !(input.dtype in ITEM_SIZE) || input.name === "__metadata__") {
      throw new CheckpointError(
        { file: "(encoder input)", tensor: input.name },
        `has ${input.values.length} values for shape [${input.shape.join(", ")}] and dtype ${input.dtype}`,
        "give as many values as the shape has elements, a dtype of BF16, F16 or F32, and a tensor name",
      );
    }
    const bytes = encodeValues(input);
    header[input.name] = {
      dtype: input.dtype,
      shape: [...input.shape],
      data_offsets: [offset, offset + bytes.length],
    };
    buffers.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (new TextEncoder().encode(json).length % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let position = 8 + headerBytes.length;
  for (const bytes of buffers) {
    out.set(bytes, position);
    position += bytes.length;
  }
  return out;
}
