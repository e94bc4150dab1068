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
import process from "node:process";

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

/** The name {@link writeFileAtomic} gives its temporary file: `.<file>.<pid>.<8 hex>.tmp`. */
const TEMPORARY = /^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$/;

/** Whether `pid` is a live process on this machine (one this user may not signal counts). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as { code?: string }).code === "EPERM";
  }
}

/**
 * Removes the temporary files that killed writers left in `dir` (the target file itself was never
 * replaced, so they hold nothing a reader needs), and returns how many it removed. `recursive`
 * also walks the subfolders (not links). `writers: "dead"` (the default) keeps a file whose
 * writer — the process id in its name — is still alive on this machine, for folders that other
 * processes may be writing into now; `"any"` removes every one, for a folder its caller holds
 * locked. A folder that does not exist holds none.
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * await Deno.writeTextFile(`${dir}/.state.json.999999999.0badf00d.tmp`, "{"); // a dead writer's
 * await Deno.writeTextFile(`${dir}/.state.json.${Deno.pid}.0123abcd.tmp`, "{"); // a live one's
 * await removeStaleTemporaries(dir); // 1
 * ```
 */
export async function removeStaleTemporaries(
  dir: string,
  opts: { recursive?: boolean; writers?: "dead" | "any" } = {},
): Promise<number> {
  let entries: Deno.DirEntry[];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return 0;
    throw err;
  }
  let removed = 0;
  for (const e of entries) {
    const path = join(dir, e.name);
    if (e.isDirectory) {
      if (opts.recursive) removed += await removeStaleTemporaries(path, opts);
      continue;
    }
    const m = e.isFile ? TEMPORARY.exec(e.name) : null;
    if (!m || (opts.writers !== "any" && processAlive(Number(m[1])))) continue;
    try {
      await Deno.remove(path);
      removed++;
    } catch {
      // Gone meanwhile (its writer renamed or removed it): nothing to do.
    }
  }
  return removed;
}
