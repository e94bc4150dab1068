/**
 * `deno task data <name> [--size 28|64|128|224] [--out datasets/MedMNIST] [--v3]` — downloads a
 * MedMNIST file and verifies the MD5 MedMNIST publishes; `deno task data --list` lists the
 * known datasets. Size 28 is the v2 file (Zenodo record 6496656, docs/data.md#medmnist-npz); `--v3`
 * takes the v3 28-px file instead (some sets had blank samples removed, so their MD5 and counts
 * differ).
 *
 * Offline it fails within `--timeout` seconds (default 15) and says where to put the file by
 * hand and which MD5 it must have.
 *
 * @example
 * ```sh
 * deno task data bloodmnist --size 224
 * ```
 * @module
 */
import { join } from "node:path";
import { parseCommandArgs, usageExit } from "../lib/cli.ts";
import { KNOWN_DATASETS } from "../lib/data/dataset.ts";
import { downloadFile, medmnistFile } from "../lib/data/download.ts";

const USAGE = `usage: deno task data <name> [--size 28|64|128|224] [--out DIR] [--v3] [--timeout S]
       deno task data --list`;

async function main(argv: string[]): Promise<number> {
  const flags = parseCommandArgs("data", USAGE, argv, {
    string: ["size", "out", "timeout"],
    boolean: ["v3", "list"],
    default: { size: "28", out: "datasets/MedMNIST", timeout: "15" },
  });
  if (flags.list) {
    for (const [name, info] of Object.entries(KNOWN_DATASETS.medmnist)) {
      const sizes = Object.keys(info.files).filter((k) => k !== "28-v3").join("/");
      const s = info.samples;
      console.log(
        `${name.padEnd(16)} ${info.dims}D ${String(info.classNames.length).padStart(2)} classes  ` +
          `${s.train}/${s.val}/${s.test}  sizes ${sizes}  ${info.task}`,
      );
    }
    return 0;
  }
  if (flags._.length !== 1) usageExit("data", "give exactly one dataset name (see --list)");
  const size = Number(flags.size);
  const timeout = Number(flags.timeout);
  if (![28, 64, 128, 224].includes(size)) {
    usageExit("data", `--size ${flags.size}: use 28, 64, 128 or 224`);
  }
  if (!(timeout > 0)) usageExit("data", `--timeout ${flags.timeout}: use a number of seconds > 0`);
  try {
    const file = medmnistFile(flags._[0], size, flags.v3 === true);
    await downloadFile(file.url, join(String(flags.out), file.fileName), file.md5, {
      connectTimeoutMs: timeout * 1000,
    });
    return 0;
  } catch (err) {
    console.error(`data: ${(err as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
