/**
 * The results folder of a run: safe names, checks of where it will be written (before anything
 * is), file-system errors in words that say what to do, and replacing an old run whole.
 *
 * @example
 * ```ts
 * checkRunName("exp1", "--exp_name"); // ok
 * // checkRunName("../x", "--exp_name") throws: one path segment expected
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";

/** Longest name {@link checkRunName} accepts (bytes of UTF-8; file systems allow 255). */
export const MAX_NAME_BYTES = 100;

/**
 * Checks that `name` is one safe path segment: not empty, no `/` or `\`, not `.` or `..`, no
 * leading dot or dash, no control characters or spaces, at most {@link MAX_NAME_BYTES} bytes.
 * `what` names the setting in the message (`--exp_name`).
 */
export function checkRunName(name: string, what: string): void {
  const fail = (why: string): never => {
    throw new Error(
      `${what} ${JSON.stringify(name)}: ${why}; use one folder name of letters, digits and ` +
        `. _ - + = @ , (e.g. exp1 or oct_k12)`,
    );
  };
  if (name === "") fail("is empty");
  if (/[/\\]/.test(name)) fail("contains a path separator (it must be one folder name)");
  if (name === "." || name === "..") fail("names the folder itself or its parent");
  if (/^[.-]/.test(name)) fail("starts with a dot or a dash");
  if (/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(name)) fail("contains a control character");
  if (/\s/u.test(name)) fail("contains white space");
  if (!/^[\p{L}\p{N}._\-+=@,]+$/u.test(name)) fail("contains characters other than those below");
  const bytes = new TextEncoder().encode(name).length;
  if (bytes > MAX_NAME_BYTES) fail(`is ${bytes} bytes long, over ${MAX_NAME_BYTES}`);
}

/** Error codes of the OS that say something about where results go. */
const FS_CODES = new Set([
  "ENOSPC",
  "EDQUOT",
  "EROFS",
  "EACCES",
  "EPERM",
  "ENOTDIR",
  "ENAMETOOLONG",
  "ELOOP",
  "EEXIST",
  "EISDIR",
  "EIO",
]);

/** Whether `err` is a file-system error {@link describeFsError} explains. */
export function isFsError(err: unknown): boolean {
  return FS_CODES.has(errorCode(err) ?? "");
}

/** The OS error code of `err` (`ENOSPC`, …), if it has one. */
export function errorCode(err: unknown): string | undefined {
  if (err && typeof err === "object" && "code" in err) {
    const code = (err as { code: unknown }).code;
    if (typeof code === "string") return code;
  }
  const m = /\(os error (\d+)\)/.exec(String((err as Error)?.message ?? ""));
  const byNumber: Record<string, string> = {
    "1": "EPERM",
    "5": "EIO",
    "13": "EACCES",
    "17": "EEXIST",
    "20": "ENOTDIR",
    "21": "EISDIR",
    "28": "ENOSPC",
    "30": "EROFS",
    "36": "ENAMETOOLONG",
    "40": "ELOOP",
    "122": "EDQUOT",
  };
  return m ? byNumber[m[1]] : undefined;
}

/** The path an OS error message names (`…: mkdir '/x/y'`), if any. */
function errorPath(err: unknown): string | undefined {
  const m = /: \w+ '([^']*)'(?: -> '[^']*')?$/.exec(String((err as Error)?.message ?? ""));
  return m?.[1];
}

/**
 * A file-system error while writing under `folder` in words: what happened, where, and the fix.
 * A full disk says that the run continues with `resume` once space is freed (the rounds
 * already written are complete; the one in progress is redone). `resumeHint` is how to say
 * "resume" to the user (`--resume` for the command line).
 *
 * @example
 * ```ts
 * try {
 *   await Deno.mkdir("/etc/hostname/results", { recursive: true });
 * } catch (err) {
 *   describeFsError(err, "results/exp1"); // "… a part of that path is a file, not a folder …"
 * }
 * ```
 */
export function describeFsError(err: unknown, folder: string, resumeHint = "resume"): string {
  const code = errorCode(err);
  const where = errorPath(err) ?? folder;
  const os = String((err as Error)?.message ?? err).replace(/ \(os error \d+\).*$/, "");
  switch (code) {
    case "ENOSPC":
    case "EDQUOT":
      return `cannot write ${where}: the disk (or your quota) is full (${os}). The rounds already ` +
        `saved in ${folder} are complete: free some space, then run the same command with ` +
        `${resumeHint} to continue`;
    case "EROFS":
      return `cannot write ${where}: the file system is read-only; choose a results folder on a ` +
        `writable disk`;
    case "EACCES":
    case "EPERM":
      return `cannot write ${where}: permission denied (${os}); choose a results folder you may ` +
        `write to, or fix its permissions`;
    case "ENOTDIR":
      return `cannot write ${where}: a part of that path is a file, not a folder; choose another ` +
        `results folder or move the file away`;
    case "ENAMETOOLONG":
      return `cannot write ${where}: a name in that path is too long for the file system (at most ` +
        `255 bytes per name); choose a shorter results folder or experiment name`;
    case "ELOOP":
      return `cannot write ${where}: too many levels of symbolic links; fix the links or choose ` +
        `another results folder`;
    case "EEXIST":
    case "EISDIR":
      return `cannot write ${where}: something else is in the way (${os}), e.g. a symbolic link ` +
        `to a missing target or a folder where a file belongs; remove it or choose another ` +
        `results folder`;
    case "EIO":
      return `cannot write ${where}: input/output error of the disk (${os}); check the disk, then ` +
        `run the same command with ${resumeHint} to continue`;
  }
  return `cannot write under ${folder}: ${os}`;
}

/**
 * Checks, without writing anything, that a run folder can be made at `dir`: every part of the
 * path that exists is a folder (or a link to one), no link in it dangles, every name fits the
 * file system. Throws naming the part and the fix; `what` names the setting (`--out`).
 */
export function checkOutputPath(dir: string, what: string): void {
  for (const part of dir.split("/")) {
    const bytes = new TextEncoder().encode(part).length;
    if (bytes > 255) {
      throw new Error(
        `${what}: the name ${part.slice(0, 24)}… in ${dir.slice(0, 80)}… is ${bytes} bytes long; ` +
          `file systems allow 255: choose a shorter one`,
      );
    }
  }
  const parts: string[] = [];
  for (let p = dir;; p = dirname(p)) {
    parts.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const p of parts) {
    let info: Deno.FileInfo;
    try {
      info = Deno.lstatSync(p);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return; // the rest will be created
      throw new Error(`${what}: ${describeFsError(err, p)}`, { cause: err });
    }
    if (info.isSymlink) {
      try {
        info = Deno.statSync(p);
      } catch {
        const target = (() => {
          try {
            return Deno.readLinkSync(p);
          } catch {
            return "?";
          }
        })();
        throw new Error(
          `${what}: ${p} is a symbolic link to ${target}, which does not exist; create its ` +
            `target folder, remove the link, or choose another results folder`,
        );
      }
    }
    if (!info.isDirectory) {
      throw new Error(
        `${what}: ${p} is a file, not a folder, so no results can be written under ${dir}; ` +
          `choose another results folder or move the file away`,
      );
    }
  }
}

/** Whether `dir` holds anything besides a lock file. */
export async function hasContent(dir: string, ignore: readonly string[] = []): Promise<boolean> {
  try {
    for await (const e of Deno.readDir(dir)) if (!ignore.includes(e.name)) return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
  return false;
}

/**
 * Whether something is at `path`: `false` only where nothing is (no such entry, or a parent that
 * is not a folder); any other error (no permission, an I/O error) is thrown rather than read as
 * "missing". `kind: "file"` asks for a regular file; `follow: false` looks at a symbolic link
 * itself rather than at what it points to.
 *
 * @example
 * ```ts
 * await pathExists(Deno.cwd()); // true
 * await pathExists(Deno.cwd(), { kind: "file" }); // false: a folder
 * await pathExists(`${Deno.cwd()}/no-such-file`); // false
 * ```
 */
export async function pathExists(
  path: string,
  opts: { kind?: "any" | "file"; follow?: boolean } = {},
): Promise<boolean> {
  try {
    const info = opts.follow === false ? await Deno.lstat(path) : await Deno.stat(path);
    return opts.kind === "file" ? info.isFile : true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) {
      return false;
    }
    throw err;
  }
}

/**
 * Moves `dir` aside in one rename (so no reader ever sees a mix of the old run and the new one)
 * and returns the hidden folder it went to; remove that with {@link removeAside}.
 */
export async function moveAside(dir: string): Promise<string> {
  const aside = join(dirname(dir), `.${basename(dir)}.replaced-${crypto.randomUUID().slice(0, 8)}`);
  await Deno.rename(dir, aside);
  return aside;
}

/** Removes a folder {@link moveAside} made, and any older ones of `dir` a killed run left. */
export async function removeAside(dir: string): Promise<void> {
  const prefix = `.${basename(dir)}.replaced-`;
  try {
    for await (const e of Deno.readDir(dirname(dir))) {
      if (e.name.startsWith(prefix) && /^[0-9a-f]{8}$/.test(e.name.slice(prefix.length))) {
        await Deno.remove(join(dirname(dir), e.name), { recursive: true }).catch(() => {});
      }
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}
