/**
 * Type-level contract of the attention calls' results, checked by `deno check` (tests/types_test.ts runs
 * it, and again with every `@ts-expect-error` line removed to prove each marks a real error). Never run.
 * @module
 */

import {
  type AnyTensor,
  type DeviceTensor,
  flexFlashAttnBackward,
  flexFlashAttnForward,
  type FlexKey,
  type HostTensor,
  toFloat32,
  toHost,
} from "../../mod.ts";

/** Host inputs give HostTensor results that the module's own helpers take directly. */
export async function hostInputsGiveHostResults(q: HostTensor, kv: HostTensor, key: FlexKey): Promise<void> {
  const { out, lse } = await flexFlashAttnForward(q, kv, kv, key);
  const values: Float32Array = toFloat32(out);
  const lseValues: Float32Array = toFloat32(lse);
  const { dq, dk, dv } = await flexFlashAttnBackward(q, q, kv, kv, out, lse, key);
  const gradients: HostTensor[] = [dq, dk, dv];
  const same: HostTensor = await toHost(out);
  // @ts-expect-error host results are not device tensors
  const onDevice: DeviceTensor = out;
  // @ts-expect-error toFloat32 of a host tensor is synchronous: no Promise to await
  const later: Promise<Float32Array> = toFloat32(out);
  console.log(values, lseValues, gradients, same, onDevice, later);
}

/** Device inputs give DeviceTensor results; reading them downloads, so it is awaited. */
export async function deviceInputsGiveDeviceResults(
  q: DeviceTensor,
  kv: DeviceTensor,
  key: FlexKey,
): Promise<void> {
  const { out, lse } = await flexFlashAttnForward(q, kv, kv, key);
  const values: Float32Array = await toFloat32(out);
  const host: HostTensor = await toHost(lse);
  const { dq } = await flexFlashAttnBackward(q, q, kv, kv, out, lse, key);
  dq.dispose();
  out.dispose();
  // @ts-expect-error device results are not host tensors
  const notHost: HostTensor = lse;
  // @ts-expect-error toFloat32 of a device tensor downloads: it returns a Promise
  const now: Float32Array = toFloat32(lse);
  console.log(values, host, notHost, now);
}

/** Inputs whose kind is known only at run time give AnyTensor results: await the readers. */
export async function unknownInputsGiveAnyTensor(q: AnyTensor, kv: AnyTensor, key: FlexKey): Promise<void> {
  const { out } = await flexFlashAttnForward(q, kv, kv, key);
  const values: Float32Array = await toFloat32(out);
  const host: HostTensor = await toHost(out);
  // @ts-expect-error it may be a host tensor
  const onDevice: DeviceTensor = out;
  console.log(values, host, onDevice);
}
