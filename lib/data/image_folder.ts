/**
 * Image-folder datasets (Kvasir-v2, OCT-C8, HyperKvasir after processing;
 * docs/data.md#image-folders): `<root>/{train,val,test}/<class>/*.jpg|jpeg|png`.
 *
 * Class order: the sorted folder names of `train` (code-point order, as Python's `sorted`), or
 * the `classNames` given (then every class must have a folder in every split, and no other
 * folder may exist). Files in a class folder are read in sorted order; other file types are
 * ignored. Every image is decoded to RGB and, with `imageSize`, CLIP-preprocessed once at load
 * time (Pillow-exact bicubic resize of the shorter side + centre crop); without it all images
 * must share one size.
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * // A tiny folder in the layout <root>/{train,val,test}/<class>/*.png:
 * const root = await Deno.makeTempDir();
 * for (const split of ["train", "val", "test"]) {
 *   for (const cls of ["AMD", "CNV"]) {
 *     await Deno.mkdir(`${root}/${split}/${cls}`, { recursive: true });
 *     await Deno.writeFile(`${root}/${split}/${cls}/0.png`, PNG.sync.write(new PNG({ width: 32, height: 24 })));
 *   }
 * }
 * // Kvasir-v2: loadImageFolder("datasets/Kvasir-v2", { imageSize: 224, classNames:
 * //   KNOWN_DATASETS.imageFolders["kvasir-v2"].classNames })
 * const ds = await loadImageFolder(root, { imageSize: 16, classNames: ["AMD", "CNV"] });
 * ds.train.sampleShape; // [16, 16, 3]
 * ```
 * @module
 */
import { basename, join } from "node:path";
import { type ImageDataset, type ImageSplit, SPLITS } from "./dataset.ts";
import { clipPreprocess, decodeImage, toChannels } from "./image.ts";

/** Options of {@link loadImageFolder}. */
export interface ImageFolderOptions {
  /** Dataset name (default: the root folder's name). */
  name?: string;
  /** Class names = folder names in label order (default: sorted folder names of `train`). */
  classNames?: string[];
  /** Resize the shorter side to this and centre-crop to a square (CLIP preprocessing). */
  imageSize?: number;
  /** 3 (default) or 1 (grey, Pillow's "L" weights). */
  channels?: 1 | 3;
  /** Print a progress line to stderr every this many images (0 = quiet, default). */
  progressEvery?: number;
  /**
   * Largest width × height an image file may declare (default: `DEER_MAX_IMAGE_PIXELS`, else
   * 50 M); a file over it is refused before it is decoded.
   */
  maxImagePixels?: number;
}

const IMAGE_EXT = /\.(jpe?g|png)$/i;

async function listDir(path: string, kind: "dir" | "file"): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(path)) {
    if (e.name.startsWith(".")) continue;
    if (kind === "dir" ? e.isDirectory : e.isFile) names.push(e.name);
  }
  // Code-point order, like Python's sorted(); not locale order.
  return names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * Whether `path` is a folder. Split and class folders must be real folders, not symbolic links:
 * the run's input fingerprint (lib/io/fingerprint.ts) never follows a link inside the data folder,
 * so a linked folder would be read but not fingerprinted. Only the data folder itself may be a link
 * (`link` true).
 */
async function isDir(path: string, link = false): Promise<boolean> {
  try {
    const info = await Deno.lstat(path);
    if (info.isSymlink && !link) {
      throw new Error(
        `${path} is a symbolic link; split and class folders must be real folders inside the ` +
          `data folder (links are neither read nor fingerprinted): copy or move the folder in, ` +
          `or link the whole data folder instead`,
      );
    }
    return info.isSymlink ? (await Deno.stat(path)).isDirectory : info.isDirectory;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/**
 * Lists the images of one split as `{ path, label }`, validating the folder layout.
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * // A tiny folder in the layout <root>/{train,val,test}/<class>/*.png:
 * const root = await Deno.makeTempDir();
 * for (const split of ["train", "val", "test"]) {
 *   for (const cls of ["AMD", "CNV"]) {
 *     await Deno.mkdir(`${root}/${split}/${cls}`, { recursive: true });
 *     await Deno.writeFile(`${root}/${split}/${cls}/0.png`, PNG.sync.write(new PNG({ width: 32, height: 24 })));
 *   }
 * }
 * const files = await listImageFolderSplit(root, "val", ["AMD", "CNV"]);
 * files.map((f) => f.label); // [0, 1]
 * ```
 */
export async function listImageFolderSplit(
  root: string,
  split: string,
  classNames: string[],
): Promise<{ path: string; label: number }[]> {
  const dir = join(root, split);
  if (!(await isDir(dir))) {
    throw new Error(
      `split folder ${dir} is missing; expected ${root}/{train,val,test}/<class>/*.jpg|png`,
    );
  }
  const folders = await listDir(dir, "dir");
  const extra = folders.filter((f) => !classNames.includes(f));
  if (extra.length > 0) {
    throw new Error(
      `${dir} has folders that are not classes: ${extra.join(", ")}; ` +
        `classes are ${classNames.join(", ")} (remove them or pass classNames)`,
    );
  }
  const out: { path: string; label: number }[] = [];
  for (let label = 0; label < classNames.length; label++) {
    const classDir = join(dir, classNames[label]);
    if (!(await isDir(classDir))) {
      throw new Error(
        `class folder ${classDir} is missing (class ${label} "${classNames[label]}")`,
      );
    }
    const files = (await listDir(classDir, "file")).filter((f) => IMAGE_EXT.test(f));
    if (files.length === 0) {
      throw new Error(
        `class folder ${classDir} is empty (no .jpg, .jpeg or .png files); add its images or ` +
          `remove the class`,
      );
    }
    for (const f of files) out.push({ path: join(classDir, f), label });
  }
  return out;
}

/**
 * Loads `<root>/{train,val,test}/<class>/*` into memory (see the module doc).
 *
 * @example
 * ```ts
 * import { PNG } from "pngjs";
 * // A tiny folder in the layout <root>/{train,val,test}/<class>/*.png:
 * const root = await Deno.makeTempDir();
 * for (const split of ["train", "val", "test"]) {
 *   for (const cls of ["AMD", "CNV"]) {
 *     await Deno.mkdir(`${root}/${split}/${cls}`, { recursive: true });
 *     await Deno.writeFile(`${root}/${split}/${cls}/0.png`, PNG.sync.write(new PNG({ width: 32, height: 24 })));
 *   }
 * }
 * const oct = await loadImageFolder(root, { imageSize: 16 }); // OCT-C8: 8 class folders
 * oct.classNames; // ["AMD", "CNV"]: sorted folder names
 * ```
 */
export async function loadImageFolder(
  root: string,
  options: ImageFolderOptions = {},
): Promise<ImageDataset> {
  if (!(await isDir(root, true))) throw new Error(`image folder ${root} does not exist`);
  const channels = options.channels ?? 3;
  if (channels !== 1 && channels !== 3) {
    throw new Error(`loadImageFolder: channels must be 1 or 3, got ${channels}`);
  }
  const size = options.imageSize;
  if (size !== undefined && !(Number.isInteger(size) && size > 0)) {
    throw new Error(`loadImageFolder: imageSize must be a positive integer, got ${size}`);
  }
  let classNames = options.classNames;
  if (classNames === undefined) {
    const trainDir = join(root, "train");
    if (!(await isDir(trainDir))) {
      throw new Error(
        `split folder ${trainDir} is missing; expected ${root}/{train,val,test}/<class>/*.jpg|png`,
      );
    }
    classNames = await listDir(trainDir, "dir");
    if (classNames.length === 0) throw new Error(`${trainDir} has no class folders`);
  }
  // List everything first, so that layout errors come before minutes of decoding.
  const lists: Record<string, { path: string; label: number }[]> = {};
  for (const split of SPLITS) lists[split] = await listImageFolderSplit(root, split, classNames);
  const total = SPLITS.reduce((a, s) => a + lists[s].length, 0);
  const every = options.progressEvery ?? 0;
  let done = 0;
  let fixed: [number, number] | undefined = size !== undefined ? [size, size] : undefined;
  const splits = {} as Record<(typeof SPLITS)[number], ImageSplit>;
  for (const split of SPLITS) {
    const files = lists[split];
    let images: Uint8Array | undefined;
    let per = 0;
    const labels = new Int32Array(files.length);
    for (let i = 0; i < files.length; i++) {
      const { path, label } = files[i];
      let bytes: Uint8Array;
      try {
        bytes = await Deno.readFile(path);
      } catch (err) {
        throw new Error(`cannot read image ${path}: ${(err as Error).message}`);
      }
      let img = decodeImage(bytes, path, { maxPixels: options.maxImagePixels });
      if (channels === 1) img = toChannels(img, 1);
      if (size !== undefined) img = clipPreprocess(img, size);
      if (fixed === undefined) fixed = [img.width, img.height];
      if (img.width !== fixed[0] || img.height !== fixed[1]) {
        throw new Error(
          `image ${path} is ${img.width}×${img.height} but earlier images are ${fixed[0]}×${
            fixed[1]
          }; ` +
            `pass imageSize to resize all images to one size`,
        );
      }
      if (images === undefined) {
        per = img.width * img.height * channels;
        images = new Uint8Array(files.length * per);
      }
      images.set(img.data, i * per);
      labels[i] = label;
      done++;
      if (every > 0 && (done % every === 0 || done === total)) {
        console.error(`image_folder: ${basename(root)} ${done}/${total} images loaded (${split})`);
      }
    }
    splits[split] = { images: images!, sampleShape: [fixed![1], fixed![0], channels], labels };
  }
  return {
    name: options.name ?? basename(root),
    classNames,
    train: splits.train,
    val: splits.val,
    test: splits.test,
    source: root,
  };
}
