#!/usr/bin/python3
"""Runs notebooks/tools/run_notebooks.py with a transport fault injected (tests only).

In the first DEER_TEST_FAULTY_RUNS notebook runs of this process, the first `stream` message the
kernel sends reaches jupyter_client damaged, so jupyter_client's own check raises `ValueError:
Invalid Signature`, as it did on CI. DEER_TEST_FAULT_KIND says how:
* `hmac` (default): a random signature;
* `interleave`: a whole `status` message, as the kernel frames it on the wire, spliced into the
  middle of the content frame -- what the Deno kernel's unlocked iopub writes do
  (docs/notebooks.md).
Arguments are the runner's. Used by tests/notebooks_runner.test.ts.
"""
import json
import os
import secrets
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "notebooks", "tools"))

import run_notebooks  # noqa: E402
from jupyter_client.session import Session  # noqa: E402

FAULTY_RUNS = int(os.environ.get("DEER_TEST_FAULTY_RUNS", "0"))
KIND = os.environ.get("DEER_TEST_FAULT_KIND", "hmac")
if KIND not in ("hmac", "interleave"):
    sys.exit(f"DEER_TEST_FAULT_KIND={KIND}: expected hmac or interleave")
state = {"run": 0, "damaged": False}

real_run_one = run_notebooks.run_one
run_notebooks.ForensicSession.install()  # first, so that it sees the damaged frames
real_deserialize = Session.deserialize


def run_one(path, args):
    state["run"] += 1
    state["damaged"] = False
    return real_run_one(path, args)


def deserialize(self, msg_list, content=True, copy=True):
    if state["run"] <= FAULTY_RUNS and not state["damaged"] and copy:
        header = json.loads(bytes(msg_list[1]))
        if header.get("msg_type") == "stream":
            state["damaged"] = True
            if KIND == "hmac":
                # A random HMAC: never equal to the real one, never a duplicate of an earlier one.
                msg_list = [secrets.token_hex(32).encode()] + list(msg_list[1:])
            else:
                content = bytes(msg_list[4])
                half = len(content) // 2
                msg_list = list(msg_list[:4]) + [content[:half] + status_on_wire(self, header)
                                                 + content[half:]] + list(msg_list[5:])
    return real_deserialize(self, msg_list, content=content, copy=copy)


def zmtp_frame(data, more):
    """One ZMTP 3 frame: flags (more, long), length, body."""
    if len(data) > 255:
        return bytes([0x03 if more else 0x02]) + len(data).to_bytes(8, "big") + data
    return bytes([0x01 if more else 0x00, len(data)]) + data


def status_on_wire(session, parent):
    """The bytes of a signed `status: idle` message as a kernel writes them to the socket."""
    msg = session.msg("status", {"execution_state": "idle"}, parent=parent)
    frames = session.serialize(msg)
    return b"".join(zmtp_frame(f, i < len(frames) - 1) for i, f in enumerate(frames))


run_notebooks.run_one = run_one
Session.deserialize = deserialize
sys.argv = [run_notebooks.__file__] + sys.argv[1:]
run_notebooks.main()
