#!/usr/bin/python3
"""Runs notebooks/tools/run_notebooks.py with a transport fault injected (tests only).

In the first DEER_TEST_FAULTY_RUNS notebook runs of this process, the first `stream` message the
kernel sends reaches jupyter_client with a signature that does not match its frames, so
jupyter_client's own check raises `ValueError: Invalid Signature`, as it did on CI when the
Deno kernel's message arrived damaged. Arguments are the runner's. Used by
tests/notebooks_runner.test.ts.
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
state = {"run": 0, "damaged": False}

real_run_one = run_notebooks.run_one
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
            # A random HMAC: never equal to the real one, never a duplicate of an earlier one.
            msg_list = [secrets.token_hex(32).encode()] + list(msg_list[1:])
    return real_deserialize(self, msg_list, content=content, copy=copy)


run_notebooks.run_one = run_one
Session.deserialize = deserialize
sys.argv = [run_notebooks.__file__] + sys.argv[1:]
run_notebooks.main()
