import assert from "node:assert/strict";
import { join } from "node:path";
import { Buffer } from "node:buffer";
import jpeg from "jpeg-js";
import { PNG } from "pngjs";
import { loadImageFolder } from "../lib/data/image_folder.ts";
import { clipPreprocess, decodeImage } from "../lib/data/image.ts";
import { pngDeclaring } from "./helpers/crafted_inputs.ts";
import { withDir } from "./helpers/temp.ts";

function rgba(w: number, h: number, seed: number): Uint8Array {
  return Uint8Array.from(
    { length: w * h * 4 },
    (_, i) => (i % 4 === 3 ? 255 : (i * 13 + seed * 31) % 256),
  );
}

function pngBytes(w: number, h: number, seed: number): Uint8Array {
  const png = new PNG({ width: w, height: h });
  png.data = Buffer.from(rgba(w, h, seed));
  return new Uint8Array(PNG.sync.write(png));
}

// jpeg-js takes ~0.1 s per encode (table set-up): encode each size once and reuse the bytes.
const jpgCache = new Map<string, Uint8Array>();
function jpgBytes(w: number, h: number): Uint8Array {
  const key = `${w}x${h}`;
  if (!jpgCache.has(key)) {
    jpgCache.set(key, jpeg.encode({ data: rgba(w, h, w), width: w, height: h }, 90).data);
  }
  return jpgCache.get(key)!;
}

/** root/{train,val,test}/{b_class,a_class,c_class}/ with JPEGs and PNGs of varied sizes. */
async function makeTree(root: string, classes = ["b_class", "a_class", "c_class"]): Promise<void> {
  let seed = 0;
  for (const split of ["train", "val", "test"]) {
    for (const c of classes) {
      const dir = join(root, split, c);
      await Deno.mkdir(dir, { recursive: true });
      await Deno.writeFile(join(dir, "img1.png"), pngBytes(20 + seed % 5, 12, seed++));
      await Deno.writeFile(join(dir, "img0.jpg"), jpgBytes(16, 24));
      if (split === "train") await Deno.writeFile(join(dir, "img2.JPEG"), jpgBytes(9, 9));
      await Deno.writeTextFile(join(dir, "notes.txt"), "ignored");
    }
  }
}

Deno.test("image folder: sorted classes, sorted files, CLIP-preprocessed once", async () => {
  await withDir(async (root) => {
    await makeTree(root);
    const ds = await loadImageFolder(root, { imageSize: 8 });
    assert.deepEqual(ds.classNames, ["a_class", "b_class", "c_class"]);
    assert.deepEqual(ds.train.sampleShape, [8, 8, 3]);
    assert.equal(ds.train.labels.length, 9);
    assert.equal(ds.val.labels.length, 6);
    assert.deepEqual(Array.from(ds.train.labels), [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    // Second image of class a_class in train is img1.png (sorted: img0.jpg, img1.png, img2.JPEG).
    const bytes = await Deno.readFile(join(root, "train", "a_class", "img1.png"));
    const want = clipPreprocess(decodeImage(bytes), 8).data;
    assert.deepEqual(ds.train.images.subarray(192, 384), want);
    assert.equal(ds.name, root.split("/").pop());

    const grey = await loadImageFolder(root, { imageSize: 6, channels: 1, name: "t" });
    assert.deepEqual(grey.test.sampleShape, [6, 6, 1]);
    assert.equal(grey.name, "t");
  });
});

Deno.test("image folder: given class names fix the order and must all exist", async () => {
  await withDir(async (root) => {
    await makeTree(root);
    const ds = await loadImageFolder(root, {
      imageSize: 4,
      classNames: ["c_class", "a_class", "b_class"],
    });
    assert.deepEqual(Array.from(ds.val.labels), [0, 0, 1, 1, 2, 2]);
    await assert.rejects(
      loadImageFolder(root, {
        imageSize: 4,
        classNames: ["a_class", "b_class", "c_class", "d_class"],
      }),
      /class folder .*train\/d_class is missing \(class 3 "d_class"\)/,
    );
    await assert.rejects(
      loadImageFolder(root, { imageSize: 4, classNames: ["a_class", "b_class"] }),
      /train has folders that are not classes: c_class/,
    );
  });
});

Deno.test("image folder errors: missing split, empty class, corrupt image, mixed sizes", async () => {
  await withDir(async (root) => {
    await makeTree(root);
    await assert.rejects(
      loadImageFolder(root),
      /image .*is .* but earlier images are .*pass imageSize/,
    );

    await Deno.writeFile(
      join(root, "val", "b_class", "img5.jpg"),
      new Uint8Array([0xff, 0xd8, 0xff, 0xe0, 1, 2, 3]),
    );
    await assert.rejects(
      loadImageFolder(root, { imageSize: 4 }),
      /val\/b_class\/img5\.jpg is not a readable JPEG/,
    );
    await Deno.remove(join(root, "val", "b_class", "img5.jpg"));

    for (const f of ["img0.jpg", "img1.png", "notes.txt"]) {
      await Deno.remove(join(root, "test", "c_class", f));
    }
    await assert.rejects(
      loadImageFolder(root, { imageSize: 4 }),
      /class folder .*test\/c_class is empty/,
    );

    await Deno.remove(join(root, "test"), { recursive: true });
    await assert.rejects(
      loadImageFolder(root, { imageSize: 4 }),
      /split folder .*\/test is missing/,
    );
    await assert.rejects(loadImageFolder(join(root, "nope")), /image folder .*nope does not exist/);
  });
});

Deno.test("image folder: an image declaring more than the pixel limit is refused by path", async () => {
  await withDir(async (root) => {
    await makeTree(root);
    await Deno.writeFile(join(root, "val", "a_class", "img9.png"), pngDeclaring(20000, 20000));
    await assert.rejects(
      loadImageFolder(root, { imageSize: 4 }),
      /val\/a_class\/img9\.png declares 20000×20000 pixels \(400\.0 MP\), more than the limit of 50 MP/,
    );
    await Deno.remove(join(root, "val", "a_class", "img9.png"));
    // The option lowers the limit: the 24×16 JPEGs (384 pixels) exceed 300.
    await assert.rejects(
      loadImageFolder(root, { imageSize: 4, maxImagePixels: 300 }),
      /img0\.jpg declares 16×24 pixels \(0\.0 MP\), more than the limit of 0\.0003 MP/,
    );
  });
});
