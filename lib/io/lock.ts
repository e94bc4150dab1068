/**
 * An exclusive lock on a run folder, held for the life of a run, so that two runs (or a resume
 * while the original still runs) never write the same records.
 *
 * The lock is the file `<folder>/.lock` under an exclusive `flock` (`Deno.FsFile.tryLock`). The
 * kernel grants it atomically to one process and drops it when that process ends in any way
 * (exit, crash, SIGKILL, power loss of a local disk), so a lock can never outlive its holder; on
 * a normal exit (also `Deno.exit`) the lock file is removed as well.
 * The file also names the holder — process id, host, start time and command — for the message
 * of a run that finds the folder locked. A lock file whose lock nobody holds was left by a run
 * that ended without releasing it (killed): it is taken over, and {@link RunLock.takenOver} names
 * the run that left it.
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * const lock = await acquireRunLock(dir);
 * try {
 *   await acquireRunLock(dir); // throws RunLockedError naming this process
 * } catch (err) {
 *   (err as RunLockedError).holder?.pid; // Deno.pid
 * }
 * lock.release();
 * ```
 * @module
 */
import { join } from "node:path";

/** Name of the lock file inside a run folder. */
export const LOCK_FILE = ".lock";

/** Who holds (or held) a run folder's lock. */
export interface LockHolder {
  pid: number;
  host: string;
  /** ISO time the holder took the lock. */
  started: string;
  /** The holder's command line, for the reader of the message. */
  command: string;
}

/** A held lock. */
export interface RunLock {
  /** The lock file. */
  path: string;
  holder: LockHolder;
  /** The run that left a stale lock file this lock took over, or null. */
  takenOver: LockHolder | null;
  /** Releases the lock and removes the lock file (idempotent; synchronous, for exit paths). */
  release(): void;
}

/** Locks this process holds, released by the `unload` handler below on every normal exit. */
const held = new Set<RunLock>();
globalThis.addEventListener("unload", () => {
  for (const lock of [...held]) lock.release();
});

/** Thrown when another live process holds the lock of a run folder. */
export class RunLockedError extends Error {
  override name = "RunLockedError";
  constructor(readonly dir: string, readonly holder: LockHolder | null) {
    super(
      `${dir} is in use by another run (${describeHolder(holder)}); wait for it to end or stop ` +
        `it, or choose another results folder`,
    );
  }
}

/** "pid 123 on host h, started 2026-…, command …" (or that the holder is unknown). */
export function describeHolder(holder: LockHolder | null): string {
  if (!holder) return "holder unknown: its lock file names no process";
  return `pid ${holder.pid} on host ${holder.host}, started ${holder.started}` +
    (holder.command ? `: ${holder.command}` : "");
}

/**
 * Takes the exclusive lock of `dir` (created if missing), or throws {@link RunLockedError}
 * naming the live holder. Never waits.
 */
export async function acquireRunLock(
  dir: string,
  opts: { command?: string } = {},
): Promise<RunLock> {
  await Deno.mkdir(dir, { recursive: true });
  const path = join(dir, LOCK_FILE);
  // A holder that releases between our open and our lock removes the file we opened: the lock
  // we then get is on a file nobody else will see, so check that the path still names it.
  for (let attempt = 0; attempt < 20; attempt++) {
    const file = await Deno.open(path, { read: true, write: true, create: true });
    let locked: boolean;
    try {
      locked = await file.tryLock(true);
    } catch (err) {
      file.close();
      throw new Error(
        `${path}: the file system does not support file locks (${(err as Error).message}); ` +
          `put the results on a local disk`,
        { cause: err },
      );
    }
    if (!locked) {
      file.close();
      throw new RunLockedError(dir, await readHolder(path));
    }
    const current = await Deno.stat(path).catch(() => null);
    const mine = await file.stat();
    if (current === null || current.ino !== mine.ino || current.dev !== mine.dev) {
      file.close();
      continue;
    }
    const takenOver = parseHolder(await readFrom(file));
    const holder: LockHolder = {
      pid: Deno.pid,
      host: hostname(),
      started: new Date().toISOString(),
      command: opts.command ?? commandLine(),
    };
    const bytes = new TextEncoder().encode(JSON.stringify(holder) + "\n");
    await file.truncate(0);
    await file.seek(0, Deno.SeekMode.Start);
    for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
    await file.sync();
    let released = false;
    const lock: RunLock = {
      path,
      holder,
      takenOver,
      release() {
        if (released) return;
        released = true;
        held.delete(lock);
        try {
          // Remove the file only while it is still ours (a replaced run folder moved it).
          const now = Deno.statSync(path);
          if (now.ino === mine.ino && now.dev === mine.dev) Deno.removeSync(path);
        } catch {
          // already gone with its folder
        }
        try {
          file.unlockSync();
        } catch {
          // closing releases it too
        }
        file.close();
      },
    };
    held.add(lock);
    return lock;
  }
  throw new Error(`${path}: the lock kept changing hands; try again`);
}

/**
 * Who holds the lock of `dir` now, without taking it or writing anything: null when nobody does
 * (no lock file, or a stale one).
 */
export async function lockHolder(dir: string): Promise<LockHolder | null | "unknown"> {
  const path = join(dir, LOCK_FILE);
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return null;
    }
    throw err;
  }
  try {
    // A shared lock is refused while an exclusive one is held.
    if (await file.tryLock(false)) {
      file.unlockSync();
      return null;
    }
  } finally {
    file.close();
  }
  return (await readHolder(path)) ?? "unknown";
}

async function readFrom(file: Deno.FsFile): Promise<string> {
  await file.seek(0, Deno.SeekMode.Start);
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(4096);
  for (;;) {
    const n = await file.read(buf);
    if (n === null || n === 0) break;
    chunks.push(buf.slice(0, n));
    if (chunks.length > 16) break; // a holder record is a few hundred bytes
  }
  return new TextDecoder().decode(concat(chunks));
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
  let off = 0;
  for (const c of chunks) {
    out.set(c, off);
    off += c.length;
  }
  return out;
}

/** The holder named by a lock file; the holder writes it right after locking, so retry briefly. */
async function readHolder(path: string): Promise<LockHolder | null> {
  for (let i = 0; i < 20; i++) {
    const text = await Deno.readTextFile(path).catch(() => "");
    const holder = parseHolder(text);
    if (holder) return holder;
    await new Promise((r) => setTimeout(r, 25));
  }
  return null;
}

function parseHolder(text: string): LockHolder | null {
  try {
    const h = JSON.parse(text);
    if (h && typeof h === "object" && Number.isInteger(h.pid) && typeof h.host === "string") {
      return {
        pid: h.pid,
        host: h.host,
        started: String(h.started ?? "?"),
        command: String(h.command ?? ""),
      };
    }
  } catch {
    // empty or torn: no holder named
  }
  return null;
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "unknown"; // no --allow-sys
  }
}

function commandLine(): string {
  const script = Deno.mainModule.startsWith("file:")
    ? new URL(Deno.mainModule).pathname
    : Deno.mainModule;
  return [script, ...Deno.args].join(" ").slice(0, 500);
}
