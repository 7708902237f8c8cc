/**
 * magi-attn: arbitrary attention masks compiled to flex keys and run by flex flash attention.
 * @module
 */
export { MagiAttnInputError, BackendUnavailableError } from "./lib/errors.ts";
