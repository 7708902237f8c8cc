/**
 * The error raised for a bad checkpoint folder (config.json, safetensors files, the fixture's expected
 * file). It is a {@linkcode MagiAttnInputError}, so it reads like the library's other input errors:
 * "`field` problem. Fix: fix.", with the file (and the tensor, where there is one) named.
 * @module
 */

import { MagiAttnInputError } from "../../mod.ts";

/** Where in a checkpoint the problem is: the file, and the tensor or config field inside it. */
export interface CheckpointLocation {
  /** Path of the file that is wrong (or missing). */
  file: string;
  /** Tensor name inside a safetensors file, when the problem is one tensor. */
  tensor?: string;
  /** Config or header field, when the problem is not a tensor (defaults to the file's name). */
  field?: string;
}

/** A checkpoint file is missing, malformed, truncated, or does not fit the model; nothing was loaded. */
export class CheckpointError extends MagiAttnInputError {
  /** The file that is wrong. */
  readonly file: string;
  /** The tensor that is wrong, if the problem is one tensor. */
  readonly tensor: string | undefined;

  /**
   * Builds "`tensor` in FILE problem. Fix: fix." (or the same with the config field).
   * @param location the file and the tensor or field
   * @param problem what is wrong (completes "`name` in FILE ...")
   * @param fix how to fix it
   */
  constructor(location: CheckpointLocation, problem: string, fix: string) {
    const name = location.tensor ?? location.field ?? location.file.split("/").pop() ?? location.file;
    super(name, `in ${location.file} ${problem}`, fix);
    this.name = "CheckpointError";
    this.file = location.file;
    this.tensor = location.tensor;
  }
}
