/**
 * Atomic file writes: the data goes to a temporary file in the same folder, is flushed, and is
 * renamed over the target, so a reader (or a resumed run) never sees a half-written file; the
 * folder is then flushed as well, so that the rename survives a power loss.
 *
 * @example
 * ```ts
 * const path = `${await Deno.makeTempDir()}/run/config.json`; // parent folders are created
 * await writeJsonAtomic(path, { seed: 10 });
 * JSON.parse(await Deno.readTextFile(path)).seed; // 10
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";

/** Writes `data` to `path` atomically, creating parent folders. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const dir = dirname(path);
  await Deno.mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${basename(path)}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`);
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true });
    try {
      let off = 0;
      while (off < bytes.length) off += await file.write(bytes.subarray(off));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
  // The rename is an entry of the folder: flush the folder too, or a power loss may bring back
  // the old file (or none) though the new one was flushed.
  await syncDir(dir);
}

/**
 * Flushes a folder's entries to disk (`fsync` of the folder). Where a folder cannot be opened
 * (Windows, or a folder without read permission) that is skipped; a failed flush throws.
 */
async function syncDir(dir: string): Promise<void> {
  let handle: Deno.FsFile;
  try {
    handle = await Deno.open(dir, { read: true });
  } catch {
    return; // this platform (or this folder's permissions) cannot open a folder
  }
  try {
    await handle.sync();
  } finally {
    handle.close();
  }
}

/** Writes `value` as pretty-printed JSON (with a final newline) atomically. */
export function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  return writeFileAtomic(path, JSON.stringify(value, null, 2) + "\n");
}

/**
 * Appends one line to a JSON-lines file atomically: the whole file is rewritten through a
 * temporary file, so a crash leaves either the old or the new content, never a torn line.
 * Suitable for per-round records (hundreds of lines), not for millions.
 */
export async function appendLineAtomic(path: string, line: string): Promise<void> {
  let old = "";
  try {
    old = await Deno.readTextFile(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  await writeFileAtomic(path, old + line.replace(/\n/g, " ") + "\n");
}
