/**
 * Hand-made hostile factor payloads for the codec and transport tests: the bytes a broken or
 * malicious sender could put on the wire, which `encodePayload` itself refuses to write.
 */
import { sha256Hex } from "../../lib/federation/codec.ts";

/** Rewrites the JSON header of an encoded payload (keeping the data) and returns the new bytes. */
export function withHeader(
  bytes: Uint8Array,
  edit: (h: Record<string, unknown>) => void,
): Uint8Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const hLen = view.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + hLen)));
  const dataStart = Math.ceil((12 + hLen) / 8) * 8;
  edit(header);
  const h = new TextEncoder().encode(JSON.stringify(header));
  const start = Math.ceil((12 + h.length) / 8) * 8;
  const out = new Uint8Array(start + bytes.length - dataStart);
  out.set(bytes.subarray(0, 8));
  new DataView(out.buffer).setUint32(8, h.length, true);
  out.set(h, 12);
  out.set(bytes.subarray(dataStart), start);
  return out;
}

/**
 * `bytes` with value `index` of array `array` (float32) replaced by `value` and that array's
 * digest recomputed, so only the finiteness check can catch it.
 */
export async function withFloat32(
  bytes: Uint8Array,
  array: number,
  index: number,
  value: number,
): Promise<Uint8Array> {
  const out = bytes.slice();
  const view = new DataView(out.buffer);
  const hLen = view.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(out.subarray(12, 12 + hLen)));
  const entry = header.arrays[array] as { offset: number; byteLength: number; dtype: string };
  if (entry.dtype !== "float32") throw new Error(`array ${array} is ${entry.dtype}`);
  const dataStart = Math.ceil((12 + hLen) / 8) * 8;
  view.setFloat32(dataStart + entry.offset + 4 * index, value, true);
  const digest = await sha256Hex(
    out.subarray(dataStart + entry.offset, dataStart + entry.offset + entry.byteLength),
  );
  return withHeader(out, (h) => {
    (h.arrays as { sha256: string }[])[array].sha256 = digest;
  });
}
