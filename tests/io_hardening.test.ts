/**
 * lib/io under hostile file-system layouts, built for real in a temporary folder: a run folder's
 * `.lock` that is a symbolic link (to a file outside, or dangling), a folder or a FIFO; a lock
 * file deleted or replaced while its run holds it; a data folder whose links lead out of it or
 * around a loop; and the folder flush after an atomic write's rename.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import {
  acquireRunLock,
  LOCK_FILE,
  LOCK_WATCH_MS,
  LockFileError,
  lockHolder,
  LockLostError,
} from "../lib/io/lock.ts";
import { fingerprint } from "../lib/io/fingerprint.ts";
import { removeStaleTemporaries, writeFileAtomic } from "../lib/io/atomic.ts";
import { listImageFolderSplit } from "../lib/data/image_folder.ts";
import { pathExists } from "../lib/io/run_folder.ts";

const tmp = await Deno.makeTempDir({ prefix: "deer-io-hardening-" });
let n = 0;
/** A fresh folder `<tmp>/<n>` with `run/` (a run folder) and `outside/` beside it. */
function layout(): { root: string; run: string; outside: string } {
  const root = join(tmp, String(n++));
  Deno.mkdirSync(join(root, "run"), { recursive: true });
  Deno.mkdirSync(join(root, "outside"));
  return { root, run: join(root, "run"), outside: join(root, "outside") };
}

function mkfifo(path: string): boolean {
  try {
    return new Deno.Command("mkfifo", { args: [path] }).outputSync().success;
  } catch {
    return false; // no mkfifo here
  }
}

Deno.test("lock: a .lock symlink to a file outside the run folder is refused; the file is untouched", async () => {
  const { run, outside } = layout();
  const victim = join(outside, "victim.txt");
  Deno.writeTextFileSync(victim, "precious\n");
  const before = Deno.statSync(victim);
  const lockPath = join(run, LOCK_FILE);
  Deno.symlinkSync(victim, lockPath);
  for (const attempt of [() => acquireRunLock(run), () => lockHolder(run)]) {
    await assert.rejects(attempt(), (err: unknown) => {
      assert.ok(err instanceof LockFileError, String(err));
      assert.equal(err.path, lockPath);
      assert.match(err.message, new RegExp(`^${lockPath} should be the run folder's lock file`));
      assert.match(err.message, new RegExp(`is a symbolic link to "${victim}"`));
      assert.match(err.message, /never follows or writes through it\. Remove it \(rm /);
      return true;
    });
  }
  assert.equal(Deno.readTextFileSync(victim), "precious\n", "the victim's bytes are unchanged");
  assert.equal(Deno.statSync(victim).mtime?.getTime(), before.mtime?.getTime());
  assert.ok(Deno.lstatSync(lockPath).isSymlink, "the link is left for the user to inspect");
  // The victim was not locked either: it can be locked exclusively now.
  const f = Deno.openSync(victim, { read: true, write: true });
  assert.ok(f.tryLockSync(true));
  f.close();
});

Deno.test("lock: a dangling .lock symlink is refused and its target is not created", async () => {
  const { run, outside } = layout();
  const target = join(outside, "created-by-lock");
  Deno.symlinkSync(target, join(run, LOCK_FILE));
  await assert.rejects(acquireRunLock(run), LockFileError);
  assert.ok(!existsSync(target), "nothing created through the link");
});

Deno.test("lock: a .lock that is a folder or a FIFO is refused without blocking", async () => {
  const { run } = layout();
  Deno.mkdirSync(join(run, LOCK_FILE));
  await assert.rejects(acquireRunLock(run), (err: unknown) => {
    assert.ok(err instanceof LockFileError);
    assert.match(err.message, /\.lock should be the run folder's lock file but is a folder;/);
    return true;
  });
  Deno.removeSync(join(run, LOCK_FILE));
  if (!mkfifo(join(run, LOCK_FILE))) return; // no mkfifo: the folder case stands alone
  for (const attempt of [() => acquireRunLock(run), () => lockHolder(run)]) {
    await assert.rejects(attempt(), (err: unknown) => {
      assert.ok(err instanceof LockFileError);
      assert.match(err.message, /but is a FIFO \(named pipe\);/);
      return true;
    });
  }
});

Deno.test("lock: a holder whose .lock was deleted and re-taken by another run fails loudly", async () => {
  const { run } = layout();
  const lockPath = join(run, LOCK_FILE);
  const a = await acquireRunLock(run, { command: "run A" });
  a.assertHeld(); // held: no throw
  const signal = a.signal;
  assert.equal(signal.aborted, false);
  Deno.removeSync(lockPath); // rm, a clean-up script, a sync tool
  assert.throws(() => a.assertHeld(), (err: unknown) => {
    assert.ok(err instanceof LockLostError);
    assert.equal(
      err.message,
      `the lock file ${lockPath} was removed or replaced by another process (it is gone); ` +
        `stopping so that two runs do not write the same folder. Check that no other run uses ` +
        `${run}, then resume`,
    );
    return true;
  });
  assert.equal(signal.aborted, true, "assertHeld aborts the signal too");
  assert.ok(signal.reason instanceof LockLostError);
  // Another run takes the folder: A stays lost, and releasing A leaves B's lock file alone.
  const b = await acquireRunLock(run, { command: "run B" });
  assert.throws(() => a.assertHeld(), LockLostError);
  a.release();
  b.assertHeld();
  assert.equal(JSON.parse(Deno.readTextFileSync(lockPath)).command, "run B");
  assert.throws(() => a.assertHeld(), /was released; this run holds it no more/);
  b.release();
  assert.ok(!existsSync(lockPath));
});

Deno.test("lock: the signal of a lock whose file is replaced aborts on its own", async () => {
  const { run } = layout();
  const lockPath = join(run, LOCK_FILE);
  const a = await acquireRunLock(run, { command: "run A" });
  try {
    const signal = a.signal;
    const aborted = new Promise<unknown>((resolve) => {
      signal.addEventListener("abort", () => resolve(signal.reason), { once: true });
    });
    // Replaced by a copy (same bytes, another inode), as a sync tool would.
    Deno.writeTextFileSync(`${lockPath}.copy`, Deno.readTextFileSync(lockPath));
    Deno.renameSync(`${lockPath}.copy`, lockPath);
    const reason = await Promise.race([
      aborted,
      new Promise((r) => setTimeout(() => r("timeout"), LOCK_WATCH_MS * 3)),
    ]);
    assert.ok(reason instanceof LockLostError, String(reason));
    assert.match(reason.message, /removed or replaced by another process \(it now names another/);
  } finally {
    a.release();
  }
  assert.ok(existsSync(lockPath), "the replacing file is not removed by the lost holder");
});

Deno.test("lock: an ordinary lock is still taken, held and released (no regression)", async () => {
  const { run } = layout();
  const lock = await acquireRunLock(run, { command: "t" });
  const signal = lock.signal; // starts the watch, which release stops
  lock.assertHeld();
  assert.equal((await lockHolder(run) as { command: string }).command, "t");
  lock.release();
  assert.equal(signal.aborted, false, "a release is not a loss");
  assert.equal(await lockHolder(run), null);
  assert.ok(!existsSync(join(run, LOCK_FILE)));
});

Deno.test("fingerprint: a folder's links out of it and around loops are not followed", async () => {
  const { root, outside } = layout();
  const data = join(root, "data");
  Deno.mkdirSync(join(data, "train", "cls0"), { recursive: true });
  Deno.writeTextFileSync(join(data, "train", "cls0", "a.png"), "img");
  Deno.writeTextFileSync(join(outside, "secret.key"), "secret");
  Deno.symlinkSync(outside, join(data, "train", "cls0", "escape")); // folder outside
  Deno.symlinkSync(join(outside, "secret.key"), join(data, "train", "cls0", "b.png")); // file
  Deno.symlinkSync("..", join(data, "train", "cls0", "up")); // loop
  Deno.symlinkSync(".", join(data, "self")); // loop at the top
  Deno.writeTextFileSync(join(data, "train", "cls0", ".DS_Store"), "junk"); // dotfile
  mkfifo(join(data, "train", "cls0", "pipe.png")); // would block a reader

  // The same folder with only its regular file.
  const clean = join(root, "clean");
  Deno.mkdirSync(join(clean, "train", "cls0"), { recursive: true });
  Deno.writeTextFileSync(join(clean, "train", "cls0", "a.png"), "img");

  const f = await fingerprint(data);
  assert.equal(f.files, 1);
  assert.equal(f.bytes, 3);
  assert.equal(f.sha256, (await fingerprint(clean)).sha256);
  // What the loader reads: the same one file.
  const listed = await listImageFolderSplit(data, "train", ["cls0"]);
  assert.deepEqual(listed.map((x) => x.path), [join(data, "train", "cls0", "a.png")]);
  // Changing the file outside does not change the fingerprint.
  Deno.writeTextFileSync(join(outside, "secret.key"), "other secret");
  assert.equal((await fingerprint(data)).sha256, f.sha256);
  // The folder given may itself be a link (the user named it).
  Deno.symlinkSync(data, join(root, "data-link"));
  assert.equal((await fingerprint(join(root, "data-link"))).sha256, f.sha256);
  // A split or class folder that is a link would be read but not fingerprinted: the loader
  // refuses it, naming it.
  Deno.mkdirSync(join(outside, "cls1"));
  Deno.writeTextFileSync(join(outside, "cls1", "c.png"), "img");
  Deno.symlinkSync(join(outside, "cls1"), join(data, "train", "cls1"));
  await assert.rejects(
    listImageFolderSplit(data, "train", ["cls0", "cls1"]),
    /train\/cls1 is a symbolic link; split and class folders must be real folders/,
  );
  Deno.symlinkSync(join(data, "train"), join(data, "val"));
  await assert.rejects(
    listImageFolderSplit(data, "val", ["cls0"]),
    /data\/val is a symbolic link/,
  );
});

Deno.test("fingerprint: a FIFO given as the input is refused, not read", async () => {
  const { root } = layout();
  const pipe = join(root, "input.npz");
  if (!mkfifo(pipe)) return;
  await assert.rejects(fingerprint(pipe), /input\.npz is neither a regular file nor a folder/);
});

Deno.test("atomic: the folder is flushed after the rename; a folder that cannot be opened is skipped", async () => {
  const dir = join(tmp, "atomic");
  const path = join(dir, "x.json");
  const events: string[] = [];
  const realOpen = Deno.open, realRename = Deno.rename;
  const d = Deno as { open: typeof Deno.open; rename: typeof Deno.rename };
  d.rename = async (from, to) => {
    await realRename(from, to);
    events.push(`rename ${to}`);
  };
  d.open = async (p, options) => {
    const file = await realOpen(p, options);
    const name = String(p);
    const sync = file.sync.bind(file);
    file.sync = async () => {
      await sync();
      events.push(`sync ${name}`);
    };
    return file;
  };
  try {
    await writeFileAtomic(path, "one");
    assert.equal(events.at(-2), `rename ${path}`);
    assert.equal(events.at(-1), `sync ${dir}`, events.join("; "));
    // Where a folder cannot be opened (Windows), the write still succeeds.
    d.open = async (p, options) => {
      if (String(p) === dir) throw new Deno.errors.PermissionDenied("a folder cannot be opened");
      return await realOpen(p, options);
    };
    await writeFileAtomic(path, "two");
    assert.equal(Deno.readTextFileSync(path), "two");
  } finally {
    d.open = realOpen;
    d.rename = realRename;
  }
});

Deno.test("fingerprint: an input edited between its loading and its fingerprint stops the run", async () => {
  const { loadInputs, runExperiment } = await import("../lib/experiment.ts");
  const { defaultConfig } = await import("../lib/fl/simulation.ts");
  const { TINY_MODEL, writeToyNpz } = await import("./helpers/reliability_inputs.ts");
  const { root } = layout();
  const npz = await writeToyNpz(join(root, "toy.npz"));
  const inputs = await loadInputs({
    dataset: npz,
    modelPath: TINY_MODEL,
    prototypes: "orthonormal",
    rank: 2,
    alpha: 2,
  });
  try {
    const config = { ...defaultConfig(), numClients: 2, rounds: 1, batchSize: 8 };
    // Rewritten in place after it was read (the same bytes, a new modification time): the run
    // cannot tell whether what it read is what it would fingerprint, and refuses to start.
    const bytes = await Deno.readFile(npz);
    await new Promise((r) => setTimeout(r, 20));
    await Deno.writeFile(npz, bytes);
    const out = join(root, "run");
    await assert.rejects(
      runExperiment(inputs, config, [10], { outDir: out }),
      /the data .*toy\.npz changed while the run was reading it/,
    );
    assert.ok(!existsSync(join(out, "config.json")), "nothing saved");
  } finally {
    inputs.dispose();
  }
});

Deno.test("atomic writes: stale temporary files — a dead writer's are removed, a live writer's kept unless the folder is locked; only the pattern, links not followed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "deer-tmpclean-" });
  const sub = join(dir, "seed-10");
  await Deno.mkdir(sub);
  const outside = await Deno.makeTempDir({ prefix: "deer-tmpclean-outside-" });
  const dead = (d: string, f: string) => join(d, `.${f}.999999999.0badf00d.tmp`);
  const live = join(dir, `.state.json.${Deno.pid}.0123abcd.tmp`);
  for (const p of [dead(dir, "state.json"), dead(sub, "records.jsonl"), live]) {
    await Deno.writeTextFile(p, "{");
  }
  // Not temporaries of writeFileAtomic: kept whatever the mode.
  const others = [
    join(dir, "state.json"),
    join(dir, ".state.json.tmp"),
    join(dir, "x.1.0badf00d.tmp"),
  ];
  for (const p of others) await Deno.writeTextFile(p, "{}");
  await Deno.writeTextFile(dead(outside, "keep"), "{");
  await Deno.symlink(outside, join(dir, "linked"));

  assert.equal(await removeStaleTemporaries(dir), 1, "the dead writer's file at the top only");
  assert.ok(!existsSync(dead(dir, "state.json")) && existsSync(live));
  assert.ok(existsSync(dead(sub, "records.jsonl")), "not recursive by default");
  assert.equal(await removeStaleTemporaries(dir, { recursive: true, writers: "any" }), 2);
  assert.ok(!existsSync(live) && !existsSync(dead(sub, "records.jsonl")));
  for (const p of others) assert.ok(existsSync(p), p);
  assert.ok(existsSync(dead(outside, "keep")), "a linked folder is not walked");
  assert.equal(await removeStaleTemporaries(join(dir, "absent")), 0);
  await Deno.remove(dir, { recursive: true });
  await Deno.remove(outside, { recursive: true });
});

Deno.test("pathExists: missing is false, a link loop or an unreadable path is an error, links looked at or followed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = join(dir, "summary.json");
    await Deno.writeTextFile(file, "{}");
    assert.equal(await pathExists(file), true);
    assert.equal(await pathExists(file, { kind: "file" }), true);
    assert.equal(await pathExists(dir, { kind: "file" }), false);
    assert.equal(await pathExists(join(dir, "nothing")), false);
    // A parent that is a file (ENOTDIR) is "nothing there", as a missing parent is.
    assert.equal(await pathExists(join(file, "config.json")), false);
    // A dangling link: nothing behind it, but the link itself is there.
    await Deno.symlink(join(dir, "gone"), join(dir, "dangling"));
    assert.equal(await pathExists(join(dir, "dangling")), false);
    assert.equal(await pathExists(join(dir, "dangling"), { follow: false }), true);
    // A loop cannot be answered either way: it is thrown, not read as "missing".
    await Deno.symlink(join(dir, "b"), join(dir, "a"));
    await Deno.symlink(join(dir, "a"), join(dir, "b"));
    await assert.rejects(
      () => pathExists(join(dir, "a")),
      (err: Error) => !(err instanceof Deno.errors.NotFound),
    );
    assert.equal(await pathExists(join(dir, "a"), { follow: false }), true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
