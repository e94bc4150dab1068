/**
 * Content fingerprints (SHA-256) of input files and folders, so that a resumed run can prove it
 * trains on the same data, model and prototypes as the run it continues.
 *
 * A file's fingerprint is the SHA-256 of its bytes. A folder's (an image-folder data set) is the
 * SHA-256 of the `sha256sum`-style listing of every regular file below it (`<hex>  <relative
 * path>\n`, sorted by path), so renaming, adding, removing or changing any image changes it.
 * Like the loaders, the walk skips names starting with `.` and does not follow symbolic links
 * (see {@link fingerprint}).
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

/**
 * The fingerprint of a file or a folder.
 *
 * A folder is walked the way the loaders read it (`listDir` in `lib/data/image_folder.ts`): an
 * entry whose name starts with `.` is skipped, and so is every entry that is not itself a folder
 * or a regular file — symbolic links (to files or folders, inside or outside), FIFOs, sockets and
 * devices. So the walk never leaves `path` (only `path` itself may be a link, the one the user
 * named), never loops, and never blocks on a pipe; each folder is read once (by device and inode),
 * and each file is checked, once open, to be the regular file that was listed. Every other
 * regular file is hashed, images or not: the fingerprint covers at least what the loaders read.
 *
 * @throws when `path` is neither a regular file nor a folder, or a file below it changes from a
 * regular file into something else while it is read.
 */
export async function fingerprint(path: string): Promise<Fingerprint> {
  const listed = await listInput(path);
  if (listed === null) {
    const { sha256, bytes } = await hashFile(path);
    return { path, sha256, bytes };
  }
  const files = listed;
  const listing = createHash("sha256");
  let bytes = 0;
  for (const { rel, info } of files) {
    const h = await hashFile(join(path, rel), info);
    bytes += h.bytes;
    listing.update(`${h.sha256}  ${rel}\n`);
  }
  return { path, sha256: listing.digest("hex"), bytes, files: files.length };
}

/**
 * The identity of an input's files without reading them: for each file {@link fingerprint} would
 * hash, its relative path, device, inode, size and modification time, as one string. Taken
 * before a loader reads an input and again after its fingerprint, it shows whether the input was
 * replaced or edited in between (so the fingerprint saved would not be of what was read).
 *
 * @example
 * ```ts
 * const before = await inputIdentity("deno.json");
 * before === await inputIdentity("deno.json"); // true while nobody edits it
 * ```
 */
export async function inputIdentity(path: string): Promise<string> {
  const listed = await listInput(path);
  const files = listed ?? [{ rel: "", info: await Deno.stat(path) }];
  return JSON.stringify(
    files.map(({ rel, info }) => [rel, info.dev, info.ino, info.size, info.mtime?.getTime()]),
  );
}

/**
 * The regular files below folder `path` in path order, walked as {@link fingerprint} says; `null`
 * when `path` is a regular file. Throws when it is neither.
 */
async function listInput(
  path: string,
): Promise<{ rel: string; info: Deno.FileInfo }[] | null> {
  const info = await Deno.stat(path);
  if (!info.isDirectory) {
    if (!info.isFile) {
      throw new Error(`${path} is neither a regular file nor a folder; give the input's file`);
    }
    return null;
  }
  const files: { rel: string; info: Deno.FileInfo }[] = [];
  const seen = new Set<string>();
  const walk = async (rel: string, dirInfo: Deno.FileInfo) => {
    if (dirInfo.ino !== null) {
      const id = `${dirInfo.dev}:${dirInfo.ino}`;
      if (seen.has(id)) return; // a bind mount or the like back into the tree
      seen.add(id);
    }
    for await (const e of Deno.readDir(rel ? join(path, rel) : path)) {
      if (e.name.startsWith(".")) continue;
      if (!e.isDirectory && !e.isFile) continue; // symlink, FIFO, socket, device: as listDir
      const r = rel ? `${rel}/${e.name}` : e.name;
      // The entry's own type (lstat): never followed, even if it became a link since listed.
      const st = await Deno.lstat(join(path, r));
      if (st.isDirectory) await walk(r, st);
      else if (st.isFile) files.push({ rel: r, info: st });
    }
  };
  await walk("", info);
  return files.sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
}

/**
 * Digests already computed in this process, by file identity (device, inode, size, modification
 * time): a sweep that runs many experiments on the same inputs reads each file once.
 */
const digests = new Map<string, { sha256: string; bytes: number }>();

/**
 * The SHA-256 of the file at `path`, read through one open descriptor. With `listed` (the
 * file's `lstat` when its folder was walked), the open file must be that same regular file:
 * one replaced by a link (out of the folder) since is refused, not followed.
 */
async function hashFile(
  path: string,
  listed?: Deno.FileInfo,
): Promise<{ sha256: string; bytes: number }> {
  const file = await Deno.open(path, { read: true });
  try {
    const info = await file.stat();
    if (listed && (!info.isFile || info.ino !== listed.ino || info.dev !== listed.dev)) {
      throw new Error(
        `${path} changed while its folder was being fingerprinted (it is no longer the regular ` +
          `file listed); make sure nothing edits the folder, and try again`,
      );
    }
    const key = `${info.dev}:${info.ino}:${info.size}:${info.mtime?.getTime()}`;
    const known = info.ino === null || info.mtime === null ? undefined : digests.get(key);
    if (known) return known;
    const { hex, bytes } = await digestOpen(file, "sha256");
    const digest = { sha256: hex, bytes };
    if (info.ino !== null && info.mtime !== null) digests.set(key, digest);
    return digest;
  } finally {
    file.close();
  }
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
  const file = await Deno.open(path, { read: true });
  try {
    return await digestOpen(file, algorithm);
  } finally {
    file.close();
  }
}

async function digestOpen(
  file: Deno.FsFile,
  algorithm: string,
): Promise<{ hex: string; bytes: number }> {
  const hash = createHash(algorithm);
  let bytes = 0;
  const buf = new Uint8Array(1 << 20);
  for (;;) {
    const n = await file.read(buf);
    if (n === null) break;
    hash.update(buf.subarray(0, n));
    bytes += n;
  }
  return { hex: hash.digest("hex"), bytes };
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
