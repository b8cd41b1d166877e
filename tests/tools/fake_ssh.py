#!/usr/bin/env python3
"""A stand-in for ``ssh`` (the launcher's remote-execution seam, MINDEDIT_SSH): takes ssh's arguments, ignores the
options and the target, and runs the remote command line with bash on this machine, as sshd would on the node.
Appends each call (argv as JSON) to $FAKE_SSH_LOG when set, so tests can check what would have gone over ssh."""
import json
import os
import sys

args = sys.argv[1:]
if os.environ.get("FAKE_SSH_LOG"):
    with open(os.environ["FAKE_SSH_LOG"], "a") as f:
        f.write(json.dumps(args) + "\n")
while args and args[0].startswith("-"):
    args = args[2:] if args[0] in ("-o", "-p", "-l", "-i") else args[1:]
target, line = args[0], args[1]
os.execvp("bash", ["bash", "-c", line])
