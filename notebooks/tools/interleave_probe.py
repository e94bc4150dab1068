#!/usr/bin/python3
"""Shows the Deno kernel's interleaved-iopub fault and checks the toolkit's guard against it.

Deno 2.9's kernel writes iopub messages from two tasks to one TCP connection without a lock:
display and stream messages from one, `status` and `execute_input` from the other. A message
larger than the socket's send buffer goes out in several writes, and a message written between
them lands inside it. jupyter_client then refuses the damaged message (`ValueError: Invalid
Signature`) and cannot find its way back into the stream, so the kernel's session is lost.

Each round runs one cell that publishes a `--mb` MB display through the toolkit's
`kernelPublisher` (lib/plot/jupyter.ts) and ends 0 to 18 ms per MB later, so that the kernel's
`status: idle` races the display's write. Mode `off` publishes without the wait that
`display()` adds after each publish (`settleMs`), mode `on` with it. A fault restarts the kernel;
the first fault's frames are saved to --out (`<mode>.transport-fault.json`).

    JUPYTER_PATH=.tools/jupyter /usr/bin/python3 notebooks/tools/interleave_probe.py \\
      --rounds 40 --mb 30 --out results/interleave

(`deno task notebooks` installs the kernelspec in .tools/jupyter first.) Prints a table; exit 1
if mode `on` lost or damaged any message.
"""
import argparse
import json
import os
import sys
import time
from queue import Empty

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_notebooks import ForensicSession, diagnose_transport, write_atomic  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The cell ends this many ms per MB after its publish resolves, cycling: the kernel takes ≈ 12–15
# ms per MB to serialize, sign and write a display (measured on 2 cores), and the race is lost
# when `status: idle` is written during the display's last writes.
ENDINGS_MS_PER_MB = [0, 2, 4, 6, 8, 10, 11, 12, 13, 14, 15, 16, 18]


class Probe:
    def __init__(self, kernel, mode):
        self.kernel, self.mode = kernel, mode
        self.km = self.kc = None

    def start(self):
        self.km = KernelManager(kernel_name=self.kernel)
        self.km.start_kernel()
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        jupyter_ts = "file://" + os.path.join(ROOT, "lib", "plot", "jupyter.ts")
        settle = "true" if self.mode == "on" else "false"
        setup = (f'import {{ kernelPublisher }} from "{jupyter_ts}";\n'
                 f"const probePublish = kernelPublisher({{ settle: {settle} }});")
        displays = self.run(setup)
        if displays != 0:
            raise RuntimeError(f"setup cell: expected no display, got {displays}")

    def stop(self):
        if self.kc is not None:
            self.kc.stop_channels()
        if self.km is not None:
            self.km.shutdown_kernel(now=True)
        self.km = self.kc = None

    def run(self, code, quiet=0.3, timeout=120):
        """Executes `code`; returns the number of display_data messages of the cell, or -1 if
        the cell never reported idle. Raises ValueError on a damaged message."""
        msg_id = self.kc.execute(code)
        idle, displays = False, 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=quiet if idle else 10)
            except Empty:
                if idle:
                    return displays
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "display_data":
                displays += 1
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return displays if idle else -1


def run_mode(args, mode):
    probe = Probe(args.kernel, mode)
    size = int(args.mb * 1_000_000)
    faults, lost, evidence = 0, 0, None
    started = time.monotonic()
    probe.start()
    try:
        for i in range(args.rounds):
            end = round(ENDINGS_MS_PER_MB[i % len(ENDINGS_MS_PER_MB)] * args.mb)
            cell = (f'await probePublish({{ "text/plain": "x".repeat({size}) }});\n'
                    f"await new Promise((r) => setTimeout(r, {end}));")
            ForensicSession.last = None
            try:
                displays = probe.run(cell)
            except ValueError as err:
                faults += 1
                reading = diagnose_transport(ForensicSession.last)
                print(f"  {mode} round {i + 1}: {str(err)[:40]}… {reading}", flush=True)
                if evidence is None and ForensicSession.last is not None:
                    evidence = os.path.join(args.out, f"{mode}.transport-fault.json")
                    write_atomic(evidence, json.dumps(ForensicSession.last, indent=2) + "\n")
                probe.stop()
                probe.start()
                continue
            if displays != 1:
                lost += 1
                print(f"  {mode} round {i + 1}: {displays} display message(s), expected 1",
                      flush=True)
    finally:
        probe.stop()
    return {"mode": mode, "rounds": args.rounds, "mb": args.mb, "faults": faults,
            "lost": lost, "seconds": round(time.monotonic() - started, 1),
            "evidence": evidence}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--mb", type=float, default=30.0, help="size of each display message (MB)")
    p.add_argument("--modes", default="off,on", help="comma-separated: off, on")
    p.add_argument("--kernel", default="deno")
    p.add_argument("--out", default=os.path.join("results", "interleave"))
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("off", "on")]
    if bad or not modes or args.rounds < 1 or args.mb <= 0:
        p.error(f"--modes takes off and/or on (got {args.modes!r}); --rounds ≥ 1; --mb > 0")
    os.makedirs(args.out, exist_ok=True)
    ForensicSession.install()
    results = []
    for mode in modes:
        print(f"mode {mode}: {args.rounds} rounds of a {args.mb:g} MB display …", flush=True)
        results.append(run_mode(args, mode))
    write_atomic(os.path.join(args.out, "summary.json"), json.dumps(results, indent=2) + "\n")
    print("\nmode  rounds  MB    damaged  lost  time (s)")
    for r in results:
        print(f"{r['mode']:<6}{r['rounds']:<8}{r['mb']:<6g}{r['faults']:<9}{r['lost']:<6}"
              f"{r['seconds']}")
    failed = any(r["mode"] == "on" and (r["faults"] or r["lost"]) for r in results)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
