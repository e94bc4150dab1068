/**
 * Downloading dataset files safely: streamed to a temporary file beside the target, MD5-checked,
 * then renamed — a failed or interrupted download never leaves a partial file under the final
 * name. Offline, it fails fast (short connect timeout) and says where to put the file by hand
 * and which MD5 it must have.
 *
 * @example
 * ```ts
 * const file = medmnistFile("bloodmnist", 28);
 * file.url; // "https://zenodo.org/record/6496656/files/bloodmnist.npz?download=1"
 * // With internet access: await downloadFile(file.url, "datasets/MedMNIST/bloodmnist.npz", file.md5);
 * ```
 * @module
 */
import { basename, dirname, join } from "node:path";
import { createHash } from "node:crypto";
import { digestFile } from "../io/fingerprint.ts";
import { KNOWN_DATASETS } from "./dataset.ts";
import { medmnistFileName } from "./medmnist.ts";

/** Sizes MedMNIST publishes (3D sets: 28 and 64 only). */
export const MEDMNIST_SIZES = [28, 64, 128, 224] as const;

/** Options of {@link downloadFile}. */
export interface DownloadOptions {
  /** Give up if the server has not answered within this many ms (default 15 000). */
  connectTimeoutMs?: number;
  /** Give up if no data arrives for this many ms once the transfer started (default 60 000). */
  stallTimeoutMs?: number;
  /** Progress lines to stderr (default true). */
  progress?: boolean;
}

/**
 * The URL and published MD5 of a MedMNIST file. Size 28 is the v2 file (Zenodo record 6496656,
 * as docs/data.md#medmnist-npz) unless `v3` is set; 64/128/224 are v3 files.
 *
 * @example
 * ```ts
 * medmnistFile("bloodmnist", 224).md5; // "b718ff6835fcbdb22ba9eacccd7b2601"
 * ```
 */
export function medmnistFile(
  name: string,
  size = 28,
  v3 = false,
): { url: string; md5: string; fileName: string } {
  const info = KNOWN_DATASETS.medmnist[name];
  if (info === undefined) {
    throw new Error(
      `unknown MedMNIST dataset "${name}"; known: ${
        Object.keys(KNOWN_DATASETS.medmnist).join(", ")
      }`,
    );
  }
  const key = size === 28 ? (v3 ? "28-v3" : "28") : String(size);
  const f = info.files[key];
  if (f === undefined) {
    const sizes = Object.keys(info.files).filter((k) => k !== "28-v3").join(", ");
    throw new Error(
      `${name} has no ${v3 && size === 28 ? "v3 " : ""}${size}-px file; sizes: ${sizes}`,
    );
  }
  return { url: f.url, md5: f.md5, fileName: medmnistFileName(name, size) };
}

/**
 * MD5 of a file, hex, read in chunks.
 *
 * @example
 * ```ts
 * const md5 = await md5File("data/default/fashion6.npz"); // 32 hex digits, as md5sum prints them
 * md5.length; // 32
 * ```
 */
export async function md5File(path: string): Promise<string> {
  return (await digestFile(path, "md5")).hex;
}

function describe(err: unknown): string {
  const e = err as Error & { cause?: unknown };
  const cause = e.cause instanceof Error ? e.cause.message : "";
  return cause && !e.message.includes(cause) ? `${e.message}: ${cause}` : e.message;
}

function mib(n: number): string {
  return (n / 1048576).toFixed(1);
}

/**
 * Downloads `url` to `dest` unless `dest` already has the right MD5. Streams to a temporary file,
 * checks the MD5, then renames; on any failure the temporary file is removed and the error says
 * how to place the file by hand. Returns `"present"` or `"downloaded"`.
 *
 * @example
 * ```ts
 * // A local server stands in for Zenodo, whose files need the internet:
 * const bytes = await Deno.readFile("data/default/fashion6.npz");
 * const server = Deno.serve({ port: 0, onListen() {} }, () => new Response(bytes));
 * const url = `http://localhost:${server.addr.port}/fashion6.npz`;
 * const dest = `${await Deno.makeTempDir()}/fashion6.npz`;
 * const md5 = await md5File("data/default/fashion6.npz");
 * await downloadFile(url, dest, md5, { progress: false }); // "downloaded"
 * await downloadFile(url, dest, md5, { progress: false }); // "present": the MD5 already matches
 * await server.shutdown();
 * ```
 */
export async function downloadFile(
  url: string,
  dest: string,
  md5: string,
  options: DownloadOptions = {},
): Promise<"present" | "downloaded"> {
  const log = (options.progress ?? true) ? (s: string) => console.error(s) : () => {};
  const label = basename(dest);
  const byHand = `Download it on a machine with internet access (${url}) and put it at ${dest}; ` +
    `its MD5 must be ${md5} (check with: md5sum ${dest}).`;
  try {
    const have = await md5File(dest);
    if (have === md5) {
      log(`${label}: already present, MD5 ok`);
      return "present";
    }
    log(`${label}: present but its MD5 is ${have}, expected ${md5}; downloading again`);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  await Deno.mkdir(dirname(dest), { recursive: true });
  const tmp = join(dirname(dest), `.${label}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.part`);
  const controller = new AbortController();
  let timer = setTimeout(() => controller.abort(), options.connectTimeoutMs ?? 15000);
  let file: Deno.FsFile | undefined;
  try {
    let res: Response;
    try {
      res = await fetch(url, { signal: controller.signal });
    } catch (err) {
      const why = controller.signal.aborted
        ? `no answer within ${(options.connectTimeoutMs ?? 15000) / 1000} s`
        : describe(err);
      throw new Error(`cannot download ${label} (${why}). ${byHand}`);
    }
    if (!res.ok || res.body === null) {
      await res.body?.cancel();
      throw new Error(`cannot download ${label}: HTTP ${res.status} ${res.statusText}. ${byHand}`);
    }
    const total = Number(res.headers.get("content-length") ?? NaN);
    log(`${label}: downloading ${url}${Number.isFinite(total) ? ` (${mib(total)} MiB)` : ""}`);
    const stall = options.stallTimeoutMs ?? 60000;
    const hash = createHash("md5");
    file = await Deno.open(tmp, { write: true, createNew: true });
    let got = 0;
    let lastLog = Date.now();
    const reader = res.body.getReader();
    for (;;) {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(), stall);
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (err) {
        const why = controller.signal.aborted
          ? `no data for ${stall / 1000} s`
          : (err as Error).message;
        throw new Error(`download of ${label} broke off after ${mib(got)} MiB (${why}). ${byHand}`);
      }
      if (chunk.done) break;
      hash.update(chunk.value);
      let off = 0;
      while (off < chunk.value.length) off += await file.write(chunk.value.subarray(off));
      got += chunk.value.length;
      if (Date.now() - lastLog > 2000) {
        lastLog = Date.now();
        const pct = Number.isFinite(total) ? ` (${((100 * got) / total).toFixed(0)}%)` : "";
        log(`${label}: ${mib(got)}${Number.isFinite(total) ? ` / ${mib(total)}` : ""} MiB${pct}`);
      }
    }
    clearTimeout(timer);
    await file.sync();
    file.close();
    file = undefined;
    const have = hash.digest("hex");
    if (have !== md5) {
      throw new Error(
        `downloaded ${label} has MD5 ${have}, expected ${md5}; the file was discarded. ${byHand}`,
      );
    }
    await Deno.rename(tmp, dest);
    log(`${label}: ${mib(got)} MiB, MD5 ok, saved to ${dest}`);
    return "downloaded";
  } finally {
    clearTimeout(timer);
    file?.close();
    await Deno.remove(tmp).catch(() => {});
  }
}
