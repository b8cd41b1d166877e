"""The per-node agent of the rank-table launcher (Ascend):

    python -m cluster.node --rank-table runs/<name>/rank_table.json --node I --log-dir DIR -- WORKER COMMAND...

starts the worker command once per device of node I with RANK_TABLE_FILE, RANK_ID, DEVICE_ID and RANK_SIZE set (the
HCCL rank-table way to initialise), logs each to DIR/worker_<rank>.log, and waits. If a worker exits non-zero the
others are terminated and the agent exits with its code; SIGTERM/SIGINT stop them all. MindSpore's CPU backend
(mccl) cannot initialise from a rank table, so on this machine only the plan (``--dry-run``) is exercised.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster.launch import stop_all

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank-table", required=True)
    ap.add_argument("--node", type=int, required=True)
    ap.add_argument("--log-dir", required=True)
    ap.add_argument("worker_argv", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    table = json.loads(Path(args.rank_table).read_text())
    server = table["server_list"][args.node]
    size = sum(len(s["device"]) for s in table["server_list"])
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    worker_argv = args.worker_argv[1:] if args.worker_argv[:1] == ["--"] else args.worker_argv
    procs = []
    for dev in server["device"]:
        env = dict(os.environ, RANK_TABLE_FILE=str(Path(args.rank_table).resolve()), RANK_ID=dev["rank_id"],
                   DEVICE_ID=dev["device_id"], RANK_SIZE=str(size))
        log = open(log_dir / f"worker_{dev['rank_id']}.log", "w")
        procs.append(subprocess.Popen(worker_argv, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    def stop(*_):
        stop_all(procs)
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c not in (None, 0)]
        if bad:
            stop_all(procs)
            sys.exit(bad[0] if bad[0] > 0 else 1)
        if all(c == 0 for c in codes):
            return
        time.sleep(0.5)


if __name__ == "__main__":
    main()
