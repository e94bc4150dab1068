/**
 * Content fingerprints (SHA-256) of input files and folders, so that a resumed run can prove it
 * trains on the same data, model and prototypes as the run it continues.
 *
 * A file's fingerprint is the SHA-256 of its bytes. A folder's (an image-folder data set) is the
 * SHA-256 of the `sha256sum`-style listing of every regular file below it (`<hex>  <relative
 * path>\n`, sorted by path), so renaming, adding, removing or changing any image changes it.
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./atomic.ts";
 * const dir = await Deno.makeTempDir();
 * await writeFileAtomic(`${dir}/a.txt`, "abc");
 * (await fingerprint(`${dir}/a.txt`)).sha256;
 * // "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
 * ```
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";

/** What {@link fingerprint} measured. */
export interface Fingerprint {
  path: string;
  sha256: string;
  /** Total size in bytes (of every file, for a folder). */
  bytes: number;
  /** Number of files, for a folder. */
  files?: number;
}

/** The fingerprint of a file or a folder. */
export async function fingerprint(path: string): Promise<Fingerprint> {
  const info = await Deno.stat(path);
  if (!info.isDirectory) {
    const { sha256, bytes } = await hashFile(path);
    return { path, sha256, bytes };
  }
  const files: string[] = [];
  const walk = async (rel: string) => {
    const entries = await Array.fromAsync(Deno.readDir(join(path, rel)));
    for (const e of entries) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      const full = join(path, r);
      const st = e.isSymlink ? await Deno.stat(full) : null;
      if (e.isDirectory || st?.isDirectory) await walk(r);
      else if (e.isFile || st?.isFile) files.push(r);
    }
  };
  await walk("");
  files.sort();
  const listing = createHash("sha256");
  let bytes = 0;
  for (const r of files) {
    const h = await hashFile(join(path, r));
    bytes += h.bytes;
    listing.update(`${h.sha256}  ${r}\n`);
  }
  return { path, sha256: listing.digest("hex"), bytes, files: files.length };
}

/**
 * Digests already computed in this process, by file identity (device, inode, size, modification
 * time): a sweep that runs many experiments on the same inputs reads each file once.
 */
const digests = new Map<string, { sha256: string; bytes: number }>();

async function hashFile(path: string): Promise<{ sha256: string; bytes: number }> {
  const info = await Deno.stat(path);
  const key = `${info.dev}:${info.ino}:${info.size}:${info.mtime?.getTime()}`;
  const known = info.ino === null || info.mtime === null ? undefined : digests.get(key);
  if (known) return known;
  const digest = await hashBytes(path);
  if (info.ino !== null && info.mtime !== null) digests.set(key, digest);
  return digest;
}

/**
 * The digest of a file's bytes (`sha256`, `md5`, … as `node:crypto` names them), read in 1 MiB
 * pieces, and its size.
 *
 * @example
 * ```ts
 * const { hex, bytes } = await digestFile("deno.json", "sha256");
 * ```
 */
export async function digestFile(
  path: string,
  algorithm: string,
): Promise<{ hex: string; bytes: number }> {
  const hash = createHash(algorithm);
  const file = await Deno.open(path, { read: true });
  let bytes = 0;
  try {
    const buf = new Uint8Array(1 << 20);
    for (;;) {
      const n = await file.read(buf);
      if (n === null) break;
      hash.update(buf.subarray(0, n));
      bytes += n;
    }
  } finally {
    file.close();
  }
  return { hex: hash.digest("hex"), bytes };
}

async function hashBytes(path: string): Promise<{ sha256: string; bytes: number }> {
  const { hex, bytes } = await digestFile(path, "sha256");
  return { sha256: hex, bytes };
}

/**
 * How the fingerprints `now` differ from `saved` (one line per input: "data file x.npz: sha256
 * 1a2b… (96 bytes) in the saved run, 3c4d… (120 bytes) now"); [] when they agree. Inputs only
 * one side has are reported too.
 */
export function fingerprintChanges(
  saved: Record<string, Fingerprint | null>,
  now: Record<string, Fingerprint | null>,
): string[] {
  const show = (f: Fingerprint | null | undefined) =>
    f
      ? `sha256 ${f.sha256.slice(0, 12)}… (${f.bytes} bytes${
        f.files === undefined ? "" : `, ${f.files} files`
      })`
      : "none";
  const out: string[] = [];
  for (const key of new Set([...Object.keys(saved), ...Object.keys(now)])) {
    const a = saved[key] ?? null, b = now[key] ?? null;
    if (a?.sha256 === b?.sha256) continue;
    out.push(`${key} ${b?.path ?? a?.path}: ${show(a)} in the saved run, ${show(b)} now`);
  }
  return out;
}
