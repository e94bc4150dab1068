import assert from "node:assert/strict";
import { join } from "node:path";
import { type NpyInput, writeNpz } from "../lib/data/npy.ts";
import {
  loadMedMnist,
  medmnistFileName,
  medmnistInfo,
  medmnistNameFromPath,
} from "../lib/data/medmnist.ts";
import { classCounts, KNOWN_DATASETS, validateSplit } from "../lib/data/dataset.ts";
import { clipPreprocess } from "../lib/data/image.ts";
import { withDir } from "./helpers/temp.ts";

const FIXTURES = new URL("./fixtures/", import.meta.url).pathname;
const SPLITS = ["train", "val", "test"] as const;

/** A MedMNIST-layout file: `sample` is the per-image shape, pixels (i·7 + k) mod 256. */
function medmnistArrays(
  sample: number[],
  counts: [number, number, number],
  numClasses: number,
): Record<string, NpyInput> {
  const per = sample.reduce((a, b) => a * b, 1);
  const out: Record<string, NpyInput> = {};
  SPLITS.forEach((s, si) => {
    const n = counts[si];
    out[`${s}_images`] = {
      shape: [n, ...sample],
      data: Uint8Array.from({ length: n * per }, (_, i) => (i * 7 + si) % 256),
    };
    out[`${s}_labels`] = {
      shape: [n, 1],
      data: Uint8Array.from({ length: n }, (_, i) => (i + si) % numClasses),
    };
  });
  return out;
}

Deno.test("datasets.json: known class names and MedMNIST MD5s", () => {
  const blood = medmnistInfo("bloodmnist")!;
  assert.equal(blood.classNames.length, 8);
  assert.equal(blood.classNames[0], "basophil");
  assert.equal(blood.classNames[7], "platelet");
  assert.deepEqual(blood.samples, { train: 11959, val: 1712, test: 3421 });
  assert.equal(blood.files["28"].md5, "7053d0359d879ad8a5505303e11de1dc");
  assert.equal(medmnistInfo("organmnist3d")!.classNames.length, 11);
  assert.equal(medmnistInfo("organmnist3d")!.dims, 3);
  const oct = KNOWN_DATASETS.imageFolders["oct-c8"];
  assert.deepEqual(oct.classNames, ["AMD", "CNV", "CSR", "DME", "DR", "DRUSEN", "MH", "NORMAL"]);
  assert.equal(oct.descriptions[oct.classNames.indexOf("DR")], "Diabetic retinopathy");
  assert.equal(oct.descriptions[oct.classNames.indexOf("MH")], "Macular hole");
  assert.equal(KNOWN_DATASETS.imageFolders["kvasir-v2"].classNames.length, 8);
  for (const [name, info] of Object.entries(KNOWN_DATASETS.medmnist)) {
    for (const f of Object.values(info.files)) assert.match(f.md5, /^[0-9a-f]{32}$/, name);
  }
  assert.equal(medmnistNameFromPath("/x/bloodmnist_224.npz"), "bloodmnist");
  assert.equal(medmnistFileName("bloodmnist", 28), "bloodmnist.npz");
});

Deno.test("loads an RGB MedMNIST file, with class names, resized once to imageSize", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "bloodmnist.npz");
    const arrays = medmnistArrays([28, 28, 3], [5, 2, 3], 8);
    await writeNpz(path, arrays);
    const ds = await loadMedMnist(path);
    assert.equal(ds.name, "bloodmnist");
    assert.equal(ds.classNames[1], "eosinophil");
    assert.deepEqual(ds.train.sampleShape, [28, 28, 3]);
    assert.deepEqual(Array.from(ds.val.labels), [1, 2]);
    assert.deepEqual(ds.train.images, arrays.train_images.data);
    assert.equal(ds.source, path);
    validateSplit(ds.test, 8, "test");
    assert.deepEqual(classCounts(ds.train, 8), [1, 1, 1, 1, 1, 0, 0, 0]);

    const big = await loadMedMnist(path, { imageSize: 56 });
    assert.deepEqual(big.train.sampleShape, [56, 56, 3]);
    const per = 28 * 28 * 3;
    const img1 = clipPreprocess({
      width: 28,
      height: 28,
      channels: 3,
      data: (arrays.train_images.data as Uint8Array).subarray(per, 2 * per),
    }, 56);
    assert.deepEqual(big.train.images.subarray(56 * 56 * 3, 2 * 56 * 56 * 3), img1.data);
  });
});

Deno.test("grey 2D images become RGB by default, stay grey with channels: 1", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "pneumoniamnist_64.npz");
    await writeNpz(path, medmnistArrays([64, 64], [4, 2, 2], 2), { compress: false });
    const ds = await loadMedMnist(path);
    assert.equal(ds.name, "pneumoniamnist");
    assert.deepEqual(ds.classNames, ["normal", "pneumonia"]);
    assert.deepEqual(ds.train.sampleShape, [64, 64, 3]);
    const i = 64 * 5 + 9;
    assert.equal(ds.train.images[i * 3], (i * 7) % 256);
    assert.equal(ds.train.images[i * 3 + 2], (i * 7) % 256);
    const grey = await loadMedMnist(path, { channels: 1, imageSize: 32 });
    assert.deepEqual(grey.test.sampleShape, [32, 32, 1]);
    assert.equal(grey.test.images.length, 2 * 32 * 32);
  });
});

Deno.test("3D volumes keep [D,H,W,1]; resizing them is refused", async () => {
  await withDir(async (dir) => {
    const path = join(dir, "organmnist3d.npz");
    await writeNpz(path, medmnistArrays([28, 28, 28], [3, 1, 2], 11));
    const ds = await loadMedMnist(path);
    assert.deepEqual(ds.train.sampleShape, [28, 28, 28, 1]);
    assert.equal(ds.classNames.length, 11);
    assert.equal(ds.classNames[0], "liver");
    await assert.rejects(
      loadMedMnist(path, { imageSize: 224 }),
      /organmnist3d\.npz: imageSize 224 .*3D volumes are not resized/,
    );
    await assert.rejects(loadMedMnist(path, { channels: 3 }), /3D volumes keep one channel/);
  });
});

Deno.test("reads the numpy-written fixture; unknown names infer classes", async () => {
  const path = join(FIXTURES, "data_numpy_mini.npz");
  const ds = await loadMedMnist(path, { channels: 1 });
  assert.equal(ds.name, "data_numpy_mini");
  assert.deepEqual(ds.classNames, ["0", "1", "2"]);
  assert.deepEqual(ds.train.sampleShape, [28, 28, 1]);
  assert.deepEqual(Array.from(ds.test.labels), [1, 1, 0]);
  // image k of train: (x·(k+1) + 3y) mod 256
  assert.equal(ds.train.images[2 * 784 + 5 * 28 + 4], (4 * 3 + 3 * 5) % 256);
  const named = await loadMedMnist(path, { classNames: ["a", "b", "c", "d"] });
  assert.equal(named.classNames.length, 4);
});

Deno.test("bad MedMNIST files: errors name the file and the key", async () => {
  await withDir(async (dir) => {
    const base = () => medmnistArrays([28, 28], [4, 2, 2], 3);

    const twoCol = base();
    twoCol.train_labels = { shape: [4, 2], data: new Uint8Array(8) };
    await writeNpz(join(dir, "bloodmnist.npz"), twoCol);
    await assert.rejects(
      loadMedMnist(join(dir, "bloodmnist.npz")),
      /labels in bloodmnist\.npz \(train_labels\) have shape \[N,2\]; expected \[N,1\]/,
    );

    const range = base();
    range.test_labels = { shape: [2, 1], data: new Uint8Array([0, 8]) };
    await writeNpz(join(dir, "bloodmnist.npz"), range);
    await assert.rejects(
      loadMedMnist(join(dir, "bloodmnist.npz")),
      /labels in bloodmnist\.npz \(test_labels\) hold 8 at row 1; expected 0\.\.7 \(8 classes of bloodmnist\)/,
    );
    await assert.rejects(
      loadMedMnist(join(dir, "bloodmnist.npz"), { name: "mine", numClasses: 5 }),
      /hold 8 at row 1; expected 0\.\.4/,
    );

    const missing = base();
    delete missing.val_images;
    await writeNpz(join(dir, "m.npz"), missing);
    await assert.rejects(loadMedMnist(join(dir, "m.npz")), /m\.npz has no array "val_images"/);

    const floats = base();
    floats.val_labels = { shape: [2, 1], data: new Float32Array([0, 1]) };
    await writeNpz(join(dir, "f.npz"), floats);
    await assert.rejects(
      loadMedMnist(join(dir, "f.npz")),
      /labels in f\.npz \(val_labels\) have dtype <f4; expected an integer dtype/,
    );

    const count = base();
    count.val_labels = { shape: [3, 1], data: new Uint8Array(3) };
    await writeNpz(join(dir, "c.npz"), count);
    await assert.rejects(
      loadMedMnist(join(dir, "c.npz")),
      /labels in c\.npz \(val_labels\) count 3 rows but the images count 2/,
    );

    const fimg = base();
    fimg.train_images = { shape: [4, 28, 28], data: new Float32Array(4 * 784) };
    await writeNpz(join(dir, "i.npz"), fimg);
    await assert.rejects(
      loadMedMnist(join(dir, "i.npz")),
      /i\.npz \(train_images\) has dtype <f4; expected uint8/,
    );

    const sizes = base();
    sizes.test_images = { shape: [2, 64, 64], data: new Uint8Array(2 * 4096) };
    await writeNpz(join(dir, "s.npz"), sizes);
    await assert.rejects(
      loadMedMnist(join(dir, "s.npz")),
      /s\.npz \(test_images\) has samples of \[64,64,1\] but train_images has \[28,28,1\]/,
    );

    await writeNpz(join(dir, "chestmnist.npz"), base());
    await assert.rejects(
      loadMedMnist(join(dir, "chestmnist.npz")),
      /chestmnist is a multi-label.*single-label/,
    );
  });
});

Deno.test("hostile MedMNIST files: empty images, oversized resizes and huge labels are refused", async () => {
  await withDir(async (dir) => {
    // 0×0 images: nothing to resize, and no sample shape to train on.
    const empty = medmnistArrays([0, 0], [3, 1, 1], 2);
    await writeNpz(join(dir, "empty.npz"), empty);
    await assert.rejects(
      loadMedMnist(join(dir, "empty.npz")),
      /empty\.npz \(train_images\) has shape \[3,0,0\]: samples of \[0,0,1\] hold no pixels; every image needs at least 1 × 1 pixels/,
    );

    // 1×1 images resized to 224: the bytes are checked before anything is allocated.
    const tiny = medmnistArrays([1, 1], [100, 10, 10], 2);
    await writeNpz(join(dir, "tiny.npz"), tiny);
    await assert.rejects(
      loadMedMnist(join(dir, "tiny.npz"), { imageSize: 224, limits: { maxBytes: 2 ** 20 } }),
      /tiny\.npz \(train_images\): 100 images of \[1,1,1\] resized to \[224,224,3\] need 14\.4 MiB, more than the limit of 1\.0 MiB; .*smaller imageSize.*limits\.maxBytes.*DEER_NPZ_MAX_BYTES/,
    );
    // The three splits count together: train alone fits, train + val does not.
    await assert.rejects(
      loadMedMnist(join(dir, "tiny.npz"), { imageSize: 32, limits: { maxBytes: 320_000 } }),
      /tiny\.npz \(val_images\): 10 images .* need 30\.0 KiB \(330\.0 KiB with the splits before it\), more than the limit of 312\.5 KiB/,
    );
    const ok = await loadMedMnist(join(dir, "tiny.npz"), {
      imageSize: 4,
      limits: { maxBytes: 6000 },
    });
    assert.deepEqual(ok.train.sampleShape, [4, 4, 3]);
    // The default limit (16 GiB): 2 M 1×1 images at 224 px would need 280 GiB.
    const n = 2_000_000;
    const many = {
      ...tiny,
      train_images: { shape: [n, 1, 1], data: new Uint8Array(n) },
      train_labels: { shape: [n, 1], data: new Uint8Array(n) },
    };
    await writeNpz(join(dir, "many.npz"), many);
    await assert.rejects(
      loadMedMnist(join(dir, "many.npz"), { imageSize: 224 }),
      /many\.npz \(train_images\): 2000000 images .* need 280\.4 GiB, more than the limit of 16\.0 GiB/,
    );

    // A <u4 label of 4294967295 is reported as such, not as the -1 an Int32 makes of it.
    const u4 = medmnistArrays([2, 2], [2, 2, 2], 2);
    u4.train_labels = { shape: [2, 1], data: new Uint32Array([0, 4294967295]) };
    await writeNpz(join(dir, "u4.npz"), u4);
    await assert.rejects(
      loadMedMnist(join(dir, "u4.npz")),
      /labels in u4\.npz \(train_labels\) hold 4294967295 at row 1; expected class indices/,
    );
  });
});
