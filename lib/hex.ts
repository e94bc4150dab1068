/**
 * Bytes as lower-case hex, and fresh random hex tokens from the platform's cryptographically secure
 * generator: the one place the toolkit writes digests, keys, nonces and serial numbers as text.
 *
 * @example
 * ```ts
 * toHex(new Uint8Array([0, 15, 255])); // "000fff"
 * randomHex(16).length; // 32
 * ```
 * @module
 */

/** `bytes` as lower-case hex, two digits per byte. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `n` bytes from `crypto.getRandomValues`, as hex (2n digits). */
export function randomHex(n: number): string {
  return toHex(crypto.getRandomValues(new Uint8Array(n)));
}
