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
 * The lock file is never followed: a `.lock` that is a symbolic link, a folder or a special file
 * (FIFO, socket, device) is refused with {@link LockFileError}, and the file opened is checked
 * (device and inode) to be the one looked at, so nothing outside the run folder is written.
 *
 * A held lock protects the folder only while `.lock` is still the file it locked: a process that
 * deletes or replaces it (`rm`, a clean-up or sync tool) lets a second run take a new lock while
 * this one still writes. {@link RunLock.assertHeld} (before writing run state) and
 * {@link RunLock.signal} (aborted once a periodic check finds the file gone) stop the holder
 * with {@link LockLostError} instead.
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
import { dirname, join } from "node:path";
import { concatBytes } from "./bytes.ts";

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
  /**
   * Throws {@link LockLostError} unless `path` still names the file this lock holds (same device
   * and inode): call it before writing run state. Cheap (one `lstat`), synchronous. Also throws
   * after {@link RunLock.release}.
   */
  assertHeld(): void;
  /**
   * Aborted, with a {@link LockLostError} as its reason, once the lock is found lost: by
   * {@link RunLock.assertHeld}, or by a check every {@link LOCK_WATCH_MS} ms that starts the
   * first time this is read (an unreferenced timer, stopped by `release`). Pass it to a run's
   * `signal` option. Never aborted by `release` itself.
   */
  readonly signal: AbortSignal;
}

/** How often (ms) a lock whose {@link RunLock.signal} was read checks that it is still held. */
export const LOCK_WATCH_MS = 2000;

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

/**
 * Thrown when a run folder's lock file is not a regular file (a symbolic link, a folder, a FIFO,
 * socket or device): the lock never follows or writes through it.
 */
export class LockFileError extends Error {
  override name = "LockFileError";
  constructor(readonly path: string, readonly kind: string) {
    super(
      `${path} should be the run folder's lock file but is ${kind}; a run never follows or ` +
        `writes through it. Remove it (rm ${JSON.stringify(path)}) if no run is using this ` +
        `folder and start again, or choose another results folder`,
    );
  }
}

/**
 * Thrown by a holder whose lock file was removed or replaced: another run may now hold a lock
 * on the same folder, so this one must stop writing.
 */
export class LockLostError extends Error {
  override name = "LockLostError";
  constructor(readonly path: string, now: string) {
    super(
      `the lock file ${path} was removed or replaced by another process (${now}); stopping so ` +
        `that two runs do not write the same folder. Check that no other run uses ` +
        `${dirname(path)}, then resume`,
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
    const file = await openLockFile(path, true);
    if (file === null) continue; // changed between look and open: look again
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
      const holder = await readHolder(file).finally(() => file.close());
      throw new RunLockedError(dir, holder);
    }
    const mine = await file.stat();
    if (!sameFile(await lstatOrNull(path), mine)) {
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
    let lost: LockLostError | null = null;
    let controller: AbortController | undefined;
    let timer: ReturnType<typeof setInterval> | undefined;
    const stopWatch = () => {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
    };
    const lock: RunLock = {
      path,
      holder,
      takenOver,
      release() {
        if (released) return;
        released = true;
        stopWatch();
        held.delete(lock);
        try {
          // Remove the file only while it is still ours (a replaced run folder moved it).
          if (sameFile(Deno.lstatSync(path), mine)) Deno.removeSync(path);
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
      assertHeld() {
        if (released) throw new Error(`the lock ${path} was released; this run holds it no more`);
        if (lost === null) {
          let now: Deno.FileInfo | null;
          try {
            now = Deno.lstatSync(path);
          } catch (err) {
            if (
              !(err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory)
            ) {
              throw err;
            }
            now = null;
          }
          if (!sameFile(now, mine)) {
            lost = new LockLostError(
              path,
              now === null ? "it is gone" : "it now names another file",
            );
          }
        }
        if (lost !== null) {
          stopWatch();
          controller?.abort(lost);
          throw lost;
        }
      },
      get signal() {
        if (controller === undefined) {
          controller = new AbortController();
          if (lost !== null) controller.abort(lost);
          else if (!released) {
            const t = setInterval(() => {
              try {
                lock.assertHeld();
              } catch (err) {
                // Only a lost lock stops the run; a failed look (a slow disk) is tried again.
                if (err instanceof LockLostError && !released) controller!.abort(err);
              }
            }, LOCK_WATCH_MS);
            Deno.unrefTimer(t);
            timer = t;
          }
        }
        return controller.signal;
      },
    };
    held.add(lock);
    return lock;
  }
  throw new Error(`${path}: the lock kept changing hands; try again`);
}

/** `lstat`, or null when nothing is there. */
async function lstatOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return null;
    }
    throw err;
  }
}

/** Whether `a` (from `lstat`) is the regular file `b` (from the open file's `stat`). */
function sameFile(a: Deno.FileInfo | null, b: Deno.FileInfo): boolean {
  return a !== null && a.isFile && a.ino === b.ino && a.dev === b.dev;
}

/** What a lock path that is not a regular file is, in words. */
function describeKind(path: string, info: Deno.FileInfo): string {
  if (info.isSymlink) {
    let target = "";
    try {
      target = ` to ${JSON.stringify(Deno.readLinkSync(path))}`;
    } catch {
      // unreadable link: say only what it is
    }
    return `a symbolic link${target}`;
  }
  if (info.isDirectory) return "a folder";
  if (info.isFifo) return "a FIFO (named pipe)";
  if (info.isSocket) return "a socket";
  if (info.isCharDevice || info.isBlockDevice) return "a device";
  return "not a regular file";
}

/**
 * Opens the lock file at `path` without following it: refuses anything but a regular file
 * ({@link LockFileError}); with `create`, creates it exclusively when missing (`O_EXCL` never
 * follows a link); null when it was missing (without `create`), or changed between the look and
 * the open (then look again). Nothing is written here.
 */
async function openLockFile(path: string, create: boolean): Promise<Deno.FsFile | null> {
  const before = await lstatOrNull(path);
  if (before === null) {
    if (!create) return null;
    try {
      return await Deno.open(path, { read: true, write: true, createNew: true });
    } catch (err) {
      if (err instanceof Deno.errors.AlreadyExists) return null;
      throw err;
    }
  }
  if (!before.isFile) throw new LockFileError(path, describeKind(path, before));
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, create ? { read: true, write: true } : { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  // Replaced by a link (or anything else) after the lstat: this is not the file looked at.
  let opened: Deno.FileInfo;
  try {
    opened = await file.stat();
  } catch (err) {
    file.close();
    throw err;
  }
  if (!sameFile(before, opened)) {
    file.close();
    return null;
  }
  return file;
}

/**
 * Who holds the lock of `dir` now, without taking it or writing anything: null when nobody does
 * (no lock file, or a stale one).
 */
export async function lockHolder(dir: string): Promise<LockHolder | null | "unknown"> {
  const path = join(dir, LOCK_FILE);
  for (let attempt = 0; attempt < 20; attempt++) {
    let file: Deno.FsFile | null;
    try {
      file = await openLockFile(path, false);
    } catch (err) {
      if (err instanceof Deno.errors.NotADirectory) return null;
      throw err;
    }
    if (file === null) {
      if ((await lstatOrNull(path)) === null) return null;
      continue; // changed between look and open
    }
    try {
      // A shared lock is refused while an exclusive one is held.
      if (await file.tryLock(false)) {
        file.unlockSync();
        return null;
      }
      return (await readHolder(file)) ?? "unknown";
    } finally {
      file.close();
    }
  }
  throw new Error(`${path}: the lock kept changing hands; try again`);
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
  return new TextDecoder().decode(concatBytes(chunks));
}

/**
 * The holder named by an open lock file (read through the descriptor, never the path); the
 * holder writes it right after locking, so retry briefly.
 */
async function readHolder(file: Deno.FsFile): Promise<LockHolder | null> {
  for (let i = 0; i < 20; i++) {
    const text = await readFrom(file).catch(() => "");
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
