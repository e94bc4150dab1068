/**
 * `deno task prototypes` — writes the class prototypes of the classification head
 * (docs/method.md#the-classification-head): the L2-normalised text features of "this is an image of
 * {class}" for every class, from a CLIP checkpoint's text tower, as a prototypes file that
 * `loadPrototypes` reads.
 *
 * ```sh
 * deno task prototypes --model PATH [--tokenizer PATH] (--dataset NAME | --classes a,b,c)
 *                      [--template "this is an image of {}"] [--reference-prompts]
 *                      [--model-act gelu|quick_gelu] --out PATH
 * ```
 *
 * `--model-act` gives the text tower's MLP activation for weights that record it nowhere (no
 * metadata `deer.text`, no config beside them); otherwise QuickGELU is assumed, with a notice.
 *
 * Class names come from `lib/data/datasets.json`: MedMNIST sets use their class names; image
 * folders (Kvasir-v2, OCT-C8) use their `descriptions`, each label paired with its own name.
 * `--reference-prompts` uses the reference's prompts instead (`referenceDescriptions`), which for
 * OCT-C8 swap DR and MH (docs/data.md#image-folders) — a warning says so. The file's `class_names`
 * metadata holds the dataset's label names in label order (the prompts are printed).
 *
 * @example
 * ```sh
 * deno task prototypes --model models/biomedclip/open_clip_model.safetensors --dataset oct-c8 \
 *   --out results/prototypes/oct-c8.safetensors
 * ```
 * @module
 */
import { parseArgs, UsageError } from "../lib/cli.ts";
import { KNOWN_DATASETS } from "../lib/data/dataset.ts";
import { savePrototypes } from "../lib/model/head.ts";
import { classPrototypes, DEFAULT_TEMPLATE, loadTextEncoder } from "../lib/model/text.ts";

const USAGE =
  `usage: deno task prototypes --model PATH [--tokenizer PATH] (--dataset NAME | --classes a,b,c)
                             [--template "this is an image of {}"] [--reference-prompts]
                             [--model-act gelu|quick_gelu] --out PATH`;

/** The names that fill the prompt template, and the label names stored with the prototypes. */
export interface PromptClasses {
  /** One per label, in label order: what replaces `{}` in the template. */
  promptNames: string[];
  /** The dataset's label names (the file's `class_names`). */
  labelNames: string[];
  /** Set when the prompts knowingly differ from the labels (the reference's OCT swap). */
  warning?: string;
}

/**
 * Prompt names for a known dataset: MedMNIST class names, or an image folder's descriptions
 * (`reference`: the reference's prompts, with a warning where they do not match the labels).
 *
 * @example
 * ```ts
 * datasetPromptClasses("oct-c8").promptNames[4]; // "Diabetic retinopathy"
 * datasetPromptClasses("oct-c8", true).promptNames[4]; // "Macular hole" (+ warning)
 * ```
 */
export function datasetPromptClasses(name: string, reference = false): PromptClasses {
  const medmnist = Object.hasOwn(KNOWN_DATASETS.medmnist, name)
    ? KNOWN_DATASETS.medmnist[name]
    : undefined;
  if (medmnist) {
    if (reference) {
      throw new UsageError(
        `--reference-prompts: ${name} has no reference prompts (the reference used Kvasir-v2 and OCT-C8); drop the flag`,
      );
    }
    return { promptNames: medmnist.classNames, labelNames: medmnist.classNames };
  }
  const folder = Object.hasOwn(KNOWN_DATASETS.imageFolders, name)
    ? KNOWN_DATASETS.imageFolders[name]
    : undefined;
  if (!folder) {
    const known = [
      ...Object.keys(KNOWN_DATASETS.medmnist),
      ...Object.keys(KNOWN_DATASETS.imageFolders),
    ];
    throw new UsageError(`--dataset ${name}: unknown; known datasets: ${known.join(", ")}`);
  }
  const own = folder.descriptions ?? folder.classNames;
  if (!reference) return { promptNames: own, labelNames: folder.classNames };
  const theirs = folder.referenceDescriptions ?? own;
  const differ = folder.classNames.filter((_, i) => theirs[i] !== own[i]);
  return {
    promptNames: theirs,
    labelNames: folder.classNames,
    warning: differ.length > 0
      ? `--reference-prompts: the reference's prompts for ${name} do not match their labels for ` +
        `${differ.join(", ")} (${
          differ.map((c) => `${c} → "${theirs[folder.classNames.indexOf(c)]}"`).join(", ")
        }); use them only to reproduce the reference (docs/data.md#image-folders)`
      : undefined,
  };
}

/** Output of the task, for tests: `log` for results, `warn` for warnings and errors. */
export interface TaskIo {
  log(message: string): void;
  warn(message: string): void;
}

/**
 * Runs the task with command-line arguments; returns the exit code (0 ok, 1 failure, 2 usage).
 *
 * @example
 * ```ts
 * const code = await main(["--model", "m.safetensors", "--classes", "a,b", "--out", "p.safetensors"]);
 * ```
 */
export async function main(
  argv: string[],
  io: TaskIo = { log: console.log, warn: console.error },
): Promise<number> {
  let classes: PromptClasses;
  let flags;
  try {
    flags = parseArgs(argv, {
      string: ["model", "tokenizer", "dataset", "classes", "template", "out", "model-act"],
      boolean: ["reference-prompts", "help"],
      alias: { help: ["h"] },
    });
    if (flags.help) {
      io.log(USAGE);
      return 0;
    }
    if (flags._.length > 0) throw new UsageError(`unexpected argument "${flags._[0]}"`);
    for (const required of ["model", "out"]) {
      if (typeof flags[required] !== "string") throw new UsageError(`--${required} is required`);
    }
    const dataset = flags.dataset as string | undefined;
    const list = flags.classes as string | undefined;
    if ((dataset === undefined) === (list === undefined)) {
      throw new UsageError("give exactly one of --dataset NAME and --classes a,b,c");
    }
    if (list !== undefined) {
      if (flags["reference-prompts"]) {
        throw new UsageError("--reference-prompts applies to --dataset only");
      }
      const names = list.split(",").map((s) => s.trim());
      if (names.some((s) => s === "")) {
        throw new UsageError(`--classes "${list}": empty class name; separate names with commas`);
      }
      classes = { promptNames: names, labelNames: names };
    } else {
      classes = datasetPromptClasses(dataset!, flags["reference-prompts"] === true);
    }
    const act = flags["model-act"];
    if (act !== undefined && act !== "gelu" && act !== "quick_gelu") {
      throw new UsageError(`--model-act ${act}: expected gelu (exact, erf) or quick_gelu`);
    }
    const template = (flags.template as string | undefined) ?? DEFAULT_TEMPLATE;
    if (!template.includes("{}")) {
      throw new UsageError(`--template "${template}" has no "{}" where the class name goes`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      io.warn(`prototypes: ${err.message}\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  if (classes.warning) io.warn(`prototypes: warning: ${classes.warning}`);
  const template = (flags.template as string | undefined) ?? DEFAULT_TEMPLATE;
  const out = flags.out as string;
  try {
    const encoder = await loadTextEncoder(
      flags.model as string,
      flags.tokenizer as string | undefined,
      { act: flags["model-act"] as "gelu" | "quick_gelu" | undefined },
    );
    try {
      const prototypes = classPrototypes(encoder, classes.promptNames, template);
      try {
        await savePrototypes(out, prototypes, classes.labelNames);
      } finally {
        prototypes.dispose();
      }
      const c = encoder.config;
      io.log(
        `prototypes: ${classes.promptNames.length} × ${c.embedDim} from the ${c.layout} text tower ` +
          `(${encoder.tokenizer.kind} tokenizer ${encoder.tokenizer.source}) → ${out}`,
      );
      classes.promptNames.forEach((name, i) =>
        io.log(`  ${classes.labelNames[i]}: "${template.replaceAll("{}", () => name)}"`)
      );
    } finally {
      encoder.dispose();
    }
    return 0;
  } catch (err) {
    io.warn(`prototypes: ${(err as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
