#!/usr/bin/python3
"""Shows the Deno kernel's late-output bug and checks that run_notebooks.py survives it.

Builds a throw-away notebook whose cells each publish two Plotly figures (through
lib/plot/jupyter.ts) and print a line, runs it several times with stock nbclient and with
run_notebooks.LateOutputClient, and counts the outputs that came back. Exit 1 if the
LateOutputClient lost any. `--settle off` (default) publishes without the wait that display()
adds after each figure, to show the kernel as it is; `--settle on` as the notebooks publish
(docs/notebooks.md).

    JUPYTER_PATH=.tools/jupyter /usr/bin/python3 notebooks/tools/late_output_probe.py --runs 5
    JUPYTER_PATH=.tools/jupyter /usr/bin/python3 notebooks/tools/late_output_probe.py --settle on

(`deno task notebooks` installs the kernelspec in .tools/jupyter first.)
"""
import argparse
import os
import shutil
import sys
import tempfile

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_notebooks import PLOTLY_MIME, LateOutputClient  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def probe_notebook(cells, settle):
    lib = "file://" + os.path.join(ROOT, "lib", "plot")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "deno", "display_name": "Deno", "language": "typescript"}
    setup = (
        f'import {{ display as show, kernelPublisher }} from "{lib}/jupyter.ts";\n'
        f'import {{ lineFigure }} from "{lib}/figures.ts";\n'
        f"const publish = kernelPublisher({{ settle: {'true' if settle else 'false'} }});\n"
        "const display = (f: Parameters<typeof show>[0]) => show(f, { publish });\n"
        "const fig = (i: number) => lineFigure({ title: `probe ${i}`, xTitle: \"x\", yTitle: \"y\", "
        "series: [{ name: \"s\", x: Array.from({ length: 2000 }, (_, k) => k), "
        "y: Array.from({ length: 2000 }, (_, k) => Math.sin(k * i)) }] });"
    )
    body = [
        f'await display(fig({i}));\nconsole.log("printed {i}");\nawait display(fig({i + 100}));'
        for i in range(cells)
    ]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in [setup, *body]]
    return nb


def count(nb):
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    figures = sum(1 for o in outs if PLOTLY_MIME in o.get("data", {}))
    lines = sum(1 for o in outs if o.get("output_type") == "stream" and "printed" in o.get("text", ""))
    return figures, lines


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cells", type=int, default=10)
    p.add_argument("--settle", choices=("off", "on"), default="off",
                   help="off: publish without display()'s wait after each figure (settleMs in "
                        "lib/plot/jupyter.ts), to show the kernel's bug as it is; on: as the "
                        "notebooks do")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="deer-late-output-")
    want = (2 * args.cells, args.cells)
    lost_by_runner = 0
    try:
        for kind, cls in (("stock nbclient", NotebookClient), ("LateOutputClient", LateOutputClient)):
            for run in range(1, args.runs + 1):
                nb = probe_notebook(args.cells, args.settle == "on")
                client = cls(nb, kernel_name="deno", timeout=120,
                             resources={"metadata": {"path": work}})
                try:
                    client.execute()
                    error = ""
                except Exception as err:  # stock nbclient may time out waiting for idle
                    error = f" ({type(err).__name__})"
                figures, lines = count(nb)
                late = ""
                if isinstance(client, LateOutputClient):
                    late = (f", {client.late_same_cell + client.late_routed} late output(s) "
                            f"recovered, max {client.max_late_delay:.3f} s after idle")
                    lost_by_runner += (want[0] - figures) + (want[1] - lines)
                print(f"{kind:17} run {run}: figures {figures}/{want[0]}, printed lines "
                      f"{lines}/{want[1]}{late}{error}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if lost_by_runner:
        print(f"LateOutputClient lost {lost_by_runner} output(s)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
