#!/usr/bin/env python3
"""A stand-in for ``ssh`` (the launcher's remote-execution seam, MINDEDIT_SSH): takes ssh's arguments, ignores the
options, and runs the remote command line with bash, as sshd would on the node: inside the network namespace
named for the target host in $FAKE_SSH_NETNS ("host=netns,..."), else on this machine. Appends each call (argv as
JSON) to $FAKE_SSH_LOG when set, so tests can check what would have gone over ssh."""
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
host = target.split("@")[-1]
namespaces = dict(item.split("=", 1) for item in os.environ.get("FAKE_SSH_NETNS", "").split(",") if "=" in item)
if host in namespaces:
    os.execvp("ip", ["ip", "netns", "exec", namespaces[host], "bash", "-c", line])
os.execvp("bash", ["bash", "-c", line])
