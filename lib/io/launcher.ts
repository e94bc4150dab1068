/**
 * Notices when the command that started this process goes away, so that a long run does not
 * train on unseen, re-parented to PID 1, after its launcher was stopped.
 *
 * `npx -y deno task train` runs as npx → sh → `deno task` → `deno run tasks/train.ts`. SIGTERM
 * to npx ends npx only; `deno task` and the training process are re-parented and keep going.
 * Those launchers all belong to the training process's process group (the shell's job), so the
 * launcher chain watched here is: the parent, and every further ancestor in the same process
 * group. When one of them ends (its process is gone, a zombie, or another process under its
 * pid), {@link watchLauncher} calls back. Reads `/proc` (Linux); elsewhere it watches nothing.
 *
 * A process started under `nohup` (SIGHUP ignored) asked to outlive its launcher: nothing is
 * watched then.
 *
 * @example
 * ```ts
 * const stop = watchLauncher(() => console.error("launcher gone"), 500);
 * stop();
 * ```
 * @module
 */

/** One process of the launcher chain. */
export interface LauncherProcess {
  pid: number;
  /** Start time in clock ticks since boot (tells a reused pid apart). */
  startTime: number;
}

interface ProcStat {
  state: string;
  ppid: number;
  pgrp: number;
  startTime: number;
}

function procStat(pid: number | "self"): ProcStat | null {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // Fields after the command name (which may hold spaces and parentheses): state ppid pgrp …
    const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return { state: f[0], ppid: Number(f[1]), pgrp: Number(f[2]), startTime: Number(f[19]) };
  } catch {
    return null;
  }
}

/**
 * The parent of this process and every further ancestor in its process group, nearest first;
 * null where `/proc` cannot tell.
 */
export function launcherChain(): LauncherProcess[] | null {
  const me = procStat("self");
  if (me === null) return null;
  const chain: LauncherProcess[] = [];
  for (let pid = me.ppid; pid > 1 && chain.length < 64;) {
    const s = procStat(pid);
    // The parent always counts; further up, only the processes of this job.
    if (s === null || (chain.length > 0 && s.pgrp !== me.pgrp)) break;
    chain.push({ pid, startTime: s.startTime });
    if (s.pgrp !== me.pgrp) break;
    pid = s.ppid;
  }
  return chain;
}

function hangupIgnoredNow(): boolean {
  try {
    const status = Deno.readTextFileSync("/proc/self/status");
    const m = /^SigIgn:\s*([0-9a-f]+)$/m.exec(status);
    return m !== null && (BigInt(`0x${m[1]}`) & 1n) === 1n; // bit 0: signal 1, SIGHUP
  } catch {
    return false;
  }
}

/**
 * Read when this module loads: Deno's first signal listener (of any signal, from any module)
 * resets an ignored SIGHUP to its default, so import this module early.
 */
const hangupIgnoredAtStart = hangupIgnoredNow();

/** Whether this process was started ignoring SIGHUP (under `nohup`). */
export function ignoresHangup(): boolean {
  return hangupIgnoredAtStart;
}

/** Whether `p` is still the same live process. */
function alive(p: LauncherProcess): boolean {
  const s = procStat(p.pid);
  return s !== null && s.state !== "Z" && s.state !== "X" && s.startTime === p.startTime;
}

/**
 * Calls `onGone(pid)` once when a process of the launcher chain ends, checking every
 * `intervalMs`; returns a function that stops watching. The timer does not keep the process
 * alive. Watches nothing under `nohup` or without `/proc`.
 */
export function watchLauncher(onGone: (pid: number) => void, intervalMs = 500): () => void {
  const chain = ignoresHangup() ? null : launcherChain();
  if (chain === null || chain.length === 0) return () => {};
  const timer = setInterval(() => {
    const gone = chain.find((p) => !alive(p));
    if (gone) {
      clearInterval(timer);
      onGone(gone.pid);
    }
  }, intervalMs);
  Deno.unrefTimer(timer);
  return () => clearInterval(timer);
}
