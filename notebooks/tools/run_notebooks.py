#!/usr/bin/python3
"""Execute Deno-kernel notebooks headless, check them, and export them to HTML.

Used by `deno task notebooks` (tasks/notebooks.ts), which installs the kernelspec inside the
project and sets JUPYTER_PATH; run it with Debian's python3 (python3-nbclient,
jupyter-nbconvert). Standard library + nbclient/nbformat/nbconvert only.

Why not `jupyter nbconvert --execute`: the Deno kernel (>= 2.8.2) can publish a cell's output
*after* it reports the cell idle, and stock nbclient stops reading a cell's outputs at idle, so
outputs -- large Plotly bundles above all -- are dropped at random. `LateOutputClient` keeps
reading iopub after idle until the channel has been quiet for `quiet_period` seconds (0.3 s),
routes any message whose parent is an earlier cell back to that cell, and drains once more
after the last cell. It counts what it recovered, so the summary shows the bug at work.

A second fault is the kernel's too: it can write two iopub messages into each other (a large
display still going out when the cell's `status: idle` is written; docs/notebooks.md).
jupyter_client then refuses the damaged message with `ValueError: Invalid Signature` and the
session is lost. Such a notebook is run once more in a fresh kernel, saying so (`retried` in the
summary, with the first run's error, where it was raised, and a reading of the damaged frames,
which are kept in `<name>.transport-fault.json`); a second failure fails. Cell errors, lost
figures and timeouts are never retried.

Checks, each a failure (exit 1) with a message naming the notebook and cell:
* any cell error (the executed notebook is still written, for reading the traceback);
* Plotly figures: the number of `application/vnd.plotly.v1+json` outputs must equal the
  notebook's `metadata.deer.figures` (at least 1 when that is absent) -- a lost output fails;
* plotly.js must be inlined in exactly one output, so the HTML export renders offline.

Outputs in --out: `<name>.ipynb` (executed), `<name>.html` (nbconvert `lab` template, with the
template's external <script src> tags -- CDN or file:// -- removed: nothing is fetched),
`summary.json`.
"""
import argparse
import asyncio
import json
import os
import re
import sys
import time
import traceback
from queue import Empty

try:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionComplete, CellExecutionError, DeadKernelError
    from nbclient.util import ensure_async
    from nbconvert import HTMLExporter
    from jupyter_client.session import Session
except ImportError as err:  # pragma: no cover - reported to the user
    print(
        f"run_notebooks: missing Python package ({err}); install with\n"
        "  apt-get install -y --no-install-recommends jupyter-core jupyter-client "
        "jupyter-nbconvert python3-nbclient\n"
        "and run this script with Debian's /usr/bin/python3",
        file=sys.stderr,
    )
    sys.exit(2)

PLOTLY_MIME = "application/vnd.plotly.v1+json"
LIBRARY_MARKER = "data-deer-plotly-library"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TRANSPORT_ERROR = "Invalid Signature"
DELIMITER = b"<IDS|MSG>"


def is_transport_error(err):
    """True for jupyter_client's refusal of a message whose HMAC does not match its frames."""
    return isinstance(err, ValueError) and str(err).startswith(TRANSPORT_ERROR)


def describe_frame(frame, edge=160):
    """What a frame holds: its length, whether it is JSON (and the keys that identify a
    message; else where parsing failed), any other message spliced into it, and its first and
    last bytes."""
    info = {"bytes": len(frame)}
    try:
        value = json.loads(frame)
        info["json"] = True
        if isinstance(value, dict):
            info["keys"] = sorted(value)[:12]
            for key in ("msg_type", "msg_id", "date", "name", "execution_state"):
                if isinstance(value.get(key), str):
                    info[key] = value[key]
    except json.JSONDecodeError as err:
        info["json"] = False
        info["jsonErrorAt"] = err.pos
        info["aroundJsonError"] = readable(frame[max(0, err.pos - 40):err.pos + edge])
    except ValueError:  # not UTF-8
        info["json"] = False
    # Another message's frames inside this one: the bytes of two messages were interleaved.
    spliced = frame.find(DELIMITER)
    if spliced >= 0:
        info["delimiterInsideAt"] = spliced
        info["aroundDelimiter"] = readable(frame[max(0, spliced - 40):spliced + 4 * edge])
    info["head"] = readable(frame[:edge])
    if len(frame) > 2 * edge:
        info["tail"] = readable(frame[-edge:])
    return info


def readable(chunk):
    return chunk.decode("utf-8", "backslashreplace")


def transport_forensics(session, msg_list):
    """The evidence of a refused message: the signature, the HMAC of the frames as received,
    where in the list four consecutive frames would match the signature (none: the signed
    frames themselves were changed), and each signed frame described."""
    frames = [f.bytes if hasattr(f, "bytes") else bytes(f) for f in msg_list]
    signature = frames[0] if frames else b""
    found = [i for i in range(1, max(1, len(frames) - 3))
             if session.sign(frames[i:i + 4]) == signature]
    return {
        "frames": len(frames),
        "signature": readable(signature),
        "recomputed": readable(session.sign(frames[1:5])),
        "signatureMatchesFramesAt": found,
        "described": [{"bytes": len(signature)}] + [describe_frame(f) for f in frames[1:]],
    }


def diagnose_transport(evidence):
    """One line reading the evidence of `transport_forensics`."""
    if not evidence or "described" not in evidence:
        return "no evidence kept"
    names = ["signature", "header", "parent header", "metadata", "content"]
    for i, frame in enumerate(evidence["described"]):
        if "delimiterInsideAt" in frame:
            name = names[i] if i < len(names) else f"buffer {i - len(names) + 1}"
            kind = evidence["described"][1].get("msg_type", "?")
            return (f"interleaved: another message's frames inside the {kind} message's {name} "
                    f"frame at byte {frame['delimiterInsideAt']} of {frame['bytes']} (the "
                    "kernel wrote two messages at once)")
    if evidence["signatureMatchesFramesAt"]:
        at = evidence["signatureMatchesFramesAt"]
        return f"frames shifted: the signature matches the four frames from frame {at}"
    return "the signed frames differ from what was signed; no other message found inside them"


class ForensicSession:
    """Installs a Session.deserialize wrapper that keeps the frames of a refused message."""

    last = None
    installed = False

    @classmethod
    def install(cls):
        if cls.installed:
            return
        cls.installed = True
        original = Session.deserialize

        def deserialize(self, msg_list, content=True, copy=True):
            try:
                return original(self, msg_list, content=content, copy=copy)
            except ValueError as err:
                if is_transport_error(err):
                    try:
                        cls.last = transport_forensics(self, msg_list)
                    except Exception as inner:  # the evidence must never hide the error
                        cls.last = {"forensicsFailed": repr(inner)}
                raise

        Session.deserialize = deserialize


class LateOutputClient(NotebookClient):
    """NotebookClient that keeps collecting a cell's outputs after the kernel reports idle."""

    def __init__(self, nb, quiet_period=0.3, final_drain=1.0, **kw):
        super().__init__(nb, **kw)
        self.quiet_period = quiet_period
        self.final_drain = final_drain
        self.msg_cells = {}  # parent msg_id -> (cell, cell_index)
        self.late_same_cell = 0  # outputs that arrived after their cell's idle
        self.late_routed = 0  # outputs that arrived while a later cell ran (or in the final drain)
        self.max_late_delay = 0.0  # seconds from idle to the latest recovered output
        self.idle_times = {}
        self.alive_polls = set()  # nbclient's kernel-alive polling tasks (see below)
        self.last_code_index = max(
            (i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()),
            default=-1,
        )

    def _route(self, msg):
        """Processes a message of an earlier cell into that cell; True if it was one."""
        parent = msg["parent_header"].get("msg_id")
        if parent not in self.msg_cells:
            return False
        cell, index = self.msg_cells[parent]
        if msg["msg_type"] not in ("status", "execute_input"):
            self.late_routed += 1
            self._note_delay(parent)
        try:
            self.process_message(msg, cell, index)
        except CellExecutionComplete:
            pass
        return True

    def _note_delay(self, parent):
        idle = self.idle_times.get(parent)
        if idle is not None:
            self.max_late_delay = max(self.max_late_delay, time.monotonic() - idle)

    async def _async_poll_output_msg(self, parent_msg_id, cell, cell_index):
        assert self.kc is not None
        self.msg_cells[parent_msg_id] = (cell, cell_index)
        idle_seen = False
        while True:
            timeout = self.quiet_period if idle_seen else None
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=timeout))
            except Empty:
                return  # quiet for quiet_period after idle: the cell is complete
            parent = msg["parent_header"].get("msg_id")
            if parent == parent_msg_id:
                if idle_seen and msg["msg_type"] not in ("status", "execute_input"):
                    self.late_same_cell += 1
                    self._note_delay(parent)
                try:
                    self.process_message(msg, cell, cell_index)
                except CellExecutionComplete:
                    idle_seen = True
                    self.idle_times[parent] = time.monotonic()
            else:
                self._route(msg)

    async def _drain(self, seconds):
        """Reads iopub until it has been quiet for `seconds`, routing messages to their cells."""
        while True:
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=seconds))
            except Empty:
                return
            self._route(msg)

    async def _async_poll_kernel_alive(self):
        # nbclient leaves this task running when reading a cell's outputs raises anything but
        # a timeout (a damaged message, say); once the kernel is cleaned up it then fails on
        # its own ("Task exception was never retrieved"). Track it so that it can be stopped.
        task = asyncio.current_task()
        self.alive_polls.add(task)
        try:
            await super()._async_poll_kernel_alive()
        finally:
            self.alive_polls.discard(task)

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        try:
            result = await super().async_execute_cell(
                cell, cell_index, execution_count=execution_count, store_history=store_history
            )
        except BaseException:
            for task in list(self.alive_polls):
                task.cancel()
            raise
        if cell_index == self.last_code_index:
            await self._drain(self.final_drain)
        return result


def cell_error_text(cell):
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            tb = "\n".join(ANSI.sub("", line) for line in out.get("traceback", []))
            return f"{out.get('ename')}: {out.get('evalue')}\n{tb}".strip()
    return None


def count_figures(nb):
    figures, libraries = 0, 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_MIME in data:
                figures += 1
                fig = data[PLOTLY_MIME]
                if not isinstance(fig, dict) or not fig.get("data"):
                    raise ValueError("a Plotly output has no traces")
            html = data.get("text/html", "")
            if isinstance(html, list):
                html = "".join(html)
            if LIBRARY_MARKER in html:
                libraries += 1
    return figures, libraries


EXTERNAL_SCRIPT = re.compile(r'<script[^>]*\bsrc="(?:https?|file)://[^"]*"[^>]*>\s*</script>', re.I)


def export_html(nb, name):
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}})
    # require.js and MathJax (from a CDN, or from file:///usr/share/javascript on Debian): the
    # notebooks use neither (no widgets, no TeX), and a self-contained page must not depend on
    # the network or on this machine's files.
    body, removed = EXTERNAL_SCRIPT.subn("", body)
    return body, removed


def write_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run_one(path, args):
    name = os.path.splitext(os.path.basename(path))[0]
    nb = nbformat.read(path, as_version=4)
    expected = nb.metadata.get("deer", {}).get("figures")
    client = LateOutputClient(
        nb,
        quiet_period=args.quiet_period,
        kernel_name=args.kernel,
        timeout=args.cell_timeout,
        startup_timeout=120,
        iopub_timeout=60,
        raise_on_iopub_timeout=True,  # never let outputs go missing silently
        resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
    )
    code_cells = sum(1 for c in nb.cells if c.cell_type == "code" and c.source.strip())
    started = time.monotonic()

    def on_cell_executed(cell, cell_index, execute_reply):
        t = time.monotonic() - started
        print(f"  {name}: cell {cell_index + 1}/{len(nb.cells)} done ({t:.1f} s)", flush=True)

    client.on_cell_executed = on_cell_executed
    problems = []
    transport = None
    ForensicSession.last = None
    try:
        client.execute()
    except CellExecutionError as err:
        bad = next((c for c in nb.cells if cell_error_text(c)), None)
        detail = cell_error_text(bad) if bad else str(err)
        index = nb.cells.index(bad) + 1 if bad else "?"
        problems.append(f"cell {index} raised an error:\n{detail}")
    except DeadKernelError as err:
        problems.append(f"the kernel died: {err}")
    except Exception as err:  # timeouts, kernel start-up failures, transport faults
        problems.append(f"{type(err).__name__}: {ANSI.sub('', str(err))}")
        if is_transport_error(err):
            # Where it was raised tells which channel (shell or iopub) carried the message.
            frames = traceback.extract_tb(err.__traceback__)[-6:]
            transport = problems[-1] + " (raised in " + " <- ".join(
                f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)
            ) + ")"
            if ForensicSession.last is not None:
                evidence = os.path.join(args.out, f"{name}.transport-fault.json")
                write_atomic(evidence, json.dumps(ForensicSession.last, indent=2) + "\n")
                transport += (f"; {diagnose_transport(ForensicSession.last)}; the refused "
                              f"message's frames: {evidence}")
    seconds = time.monotonic() - started

    for i, cell in enumerate(nb.cells):
        text = cell_error_text(cell) if cell.cell_type == "code" else None
        if text and not any(p.startswith(f"cell {i + 1} ") for p in problems):
            problems.append(f"cell {i + 1} has an error output:\n{text}")
    try:
        figures, libraries = count_figures(nb)
    except ValueError as err:
        figures, libraries = 0, 0
        problems.append(str(err))
    if not problems:
        want = expected if isinstance(expected, int) else None
        if want is not None and figures != want:
            problems.append(
                f"{figures} Plotly figure output(s), expected {want} (metadata.deer.figures): "
                "an output was lost or a figure cell did not display"
            )
        elif want is None and figures < 1:
            problems.append("no Plotly figure output (every notebook must show its figures)")
        if figures and libraries != 1:
            problems.append(
                f"plotly.js is inlined in {libraries} outputs, expected exactly 1 (the first "
                "figure of the session carries it; the HTML export must render offline)"
            )

    out_nb = os.path.join(args.out, f"{name}.ipynb")
    write_atomic(out_nb, nbformat.writes(nb))
    html, removed = export_html(nb, name)
    out_html = os.path.join(args.out, f"{name}.html")
    write_atomic(out_html, html)
    return {
        "notebook": name,
        "ok": not problems,
        "problems": problems,
        "seconds": round(seconds, 1),
        "codeCells": code_cells,
        "figures": figures,
        "expectedFigures": expected,
        "plotlyLibraryOutputs": libraries,
        "lateOutputsSameCell": client.late_same_cell,
        "lateOutputsRouted": client.late_routed,
        "maxLateDelaySeconds": round(client.max_late_delay, 3),
        "htmlBytes": len(html.encode("utf-8")),
        "externalScriptsRemoved": removed,
        "executed": out_nb,
        "html": out_html,
        "transportError": transport,
        "retried": None,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("notebooks", nargs="+", help=".ipynb files to execute, in order")
    p.add_argument("--out", required=True, help="folder for executed notebooks and HTML")
    p.add_argument("--kernel", default="deno")
    p.add_argument("--cell-timeout", type=int, default=900, help="seconds per cell")
    p.add_argument("--quiet-period", type=float, default=0.3,
                   help="seconds of iopub silence after idle before a cell counts as complete")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ForensicSession.install()
    results = []
    for path in args.notebooks:
        print(f"notebook {os.path.basename(path)} …", flush=True)
        r = run_one(path, args)
        if not r["ok"] and r["transportError"]:
            print(f"  {r['notebook']}: {r['transportError']}\n  running it once more in a fresh "
                  "kernel (a transport fault, not the notebook's)", file=sys.stderr, flush=True)
            first = r["transportError"]
            r = run_one(path, args)
            r["retried"] = first
        results.append(r)
        late = r["lateOutputsSameCell"] + r["lateOutputsRouted"]
        status = ("ok" if r["ok"] else "FAILED") + (" (second run)" if r["retried"] else "")
        print(
            f"{status}: {r['notebook']} — {r['codeCells']} code cells, {r['figures']} figures, "
            f"{r['seconds']} s, {late} late output(s) recovered "
            f"(max {r['maxLateDelaySeconds']} s after idle), HTML {r['htmlBytes'] / 1e6:.1f} MB",
            flush=True,
        )
        for problem in r["problems"]:
            print("  " + problem.replace("\n", "\n    "), file=sys.stderr, flush=True)
    write_atomic(os.path.join(args.out, "summary.json"), json.dumps(results, indent=2) + "\n")
    failed = [r["notebook"] for r in results if not r["ok"]]
    if failed:
        print(f"run_notebooks: {len(failed)} of {len(results)} notebook(s) failed: "
              f"{', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
