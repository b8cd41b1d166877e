"""The cluster launcher without a cluster: config validation, hostile input, HCCL rank table v1.0 checked field by
field, hccn_tool / hccn.conf parsers on captured outputs, and the dry run of the 2-node x 8-device 910B config.
(Real multi-process launches, the two-node rehearsal through the ssh seam and a killed rank: tests/test_parallel.py.)"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster.config import parse_cluster
from cluster.ranktable import collect_device_ips, parse_hccn_conf, parse_hccn_tool, rank_table
from mindedit.config import JobConfigError, load_job_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "qwen3_30b_a3b_gateswa.yaml"

# captured on a 910B server (values as the tools print them)
HCCN_TOOL = "ipaddr:192.168.100.101\nnetmask:255.255.255.0\n"
HCCN_CONF = "\n".join(f"address_{d}=192.168.10{d % 4}.{101 - d // 4}\nnetmask_{d}=255.255.255.0\n"
                      f"netdetect_{d}=192.168.10{d % 4}.1\ngateway_{d}=192.168.10{d % 4}.1" for d in range(8)) + \
    "\nsend_arp_status=1\n"


def two_nodes(**changes):
    raw = {"launcher": "msrun", "master": {"host": "10.0.0.1", "port": 8118},
           "nodes": [{"host": "10.0.0.1", "devices": list(range(8)),
                      "device_ips": [f"192.168.10{d % 4}.{101 - d // 4}" for d in range(8)]},
                     {"host": "10.0.0.2", "devices": list(range(8)),
                      "device_ips": [f"192.168.10{d % 4}.{103 - d // 4}" for d in range(8)]}],
           "ssh": {"user": "mindedit", "port": 22}, "env": {"HCCL_CONNECT_TIMEOUT": "600"}}
    raw.update(changes)
    return raw


def test_rank_table_v1_field_by_field():
    table = rank_table(parse_cluster(two_nodes(), 16, "job.yaml"))
    assert list(table) == ["version", "server_count", "server_list", "status"]
    assert table["version"] == "1.0" and table["status"] == "completed" and table["server_count"] == "2"
    rank = 0
    for s, server in enumerate(table["server_list"]):
        assert set(server) == {"server_id", "host_nic_ip", "device"}
        assert server["server_id"] == f"10.0.0.{s + 1}" and server["host_nic_ip"] == "reserve"
        assert len(server["device"]) == 8
        for d, dev in enumerate(server["device"]):
            assert set(dev) == {"device_id", "device_ip", "rank_id"}
            assert all(isinstance(v, str) for v in dev.values())
            assert dev["device_id"] == str(d) and dev["rank_id"] == str(rank)  # contiguous, in node order
            assert dev["device_ip"] == f"192.168.10{d % 4}.{101 + 2 * s - d // 4}"
            rank += 1


def test_device_ips_from_hccn_tool_and_hccn_conf():
    assert parse_hccn_tool(HCCN_TOOL) == "192.168.100.101"
    ips = parse_hccn_conf(HCCN_CONF)
    assert ips == {d: f"192.168.10{d % 4}.{101 - d // 4}" for d in range(8)}
    raw = two_nodes()
    for n in raw["nodes"]:
        del n["device_ips"]
    cluster = parse_cluster(raw, 16, "job.yaml")
    collect_device_ips(cluster, lambda node: HCCN_CONF)
    assert cluster.nodes[1].device_ips == [ips[d] for d in range(8)]
    with pytest.raises(ValueError, match="no 'ipaddr:' line"):
        parse_hccn_tool("command not found")
    with pytest.raises(ValueError, match=r"10\.0\.0\.1:/etc/hccn\.conf: no address_N= lines"):
        collect_device_ips(parse_cluster({**raw, "nodes": [dict(n) for n in raw["nodes"]]}, 16, "job.yaml"),
                           lambda node: "")


def small(**changes):
    raw = {"launcher": "msrun", "master": {"host": "h1", "port": 8118},
           "nodes": [{"host": "h1", "devices": [0]}, {"host": "h2", "devices": [0]}]}
    raw.update(changes)
    return raw


@pytest.mark.parametrize("change,message", [
    ({"nodes": [{"host": "h1", "devices": [0]}, {"host": "a; rm -rf /", "devices": [0]}]},
     r"nodes\[1\]\.host='a; rm -rf /': not a valid host name"),
    ({"nodes": [{"host": "h1", "devices": [0]}, {"host": "$(reboot)", "devices": [0]}]}, r"not a valid host name"),
    ({"nodes": [{"host": "h1", "devices": [0]}, {"host": "h1", "devices": [0]}]}, r"the same host as nodes\[0\]"),
    ({"nodes": [{"host": "h1", "devices": [0], "device_ips": ["1.2.3.4"]},
                {"host": "h2", "devices": [0], "device_ips": ["1.2.3.4"]}]}, r"1\.2\.3\.4 is also a device IP"),
    ({"nodes": [{"host": "h1", "devices": [0, 1]}, {"host": "h2", "devices": [0]}]}, r"same number of devices"),
    ({"nodes": [{"host": "h1", "devices": [0, 0]}]}, r"a device id appears twice"),
    ({"nodes": [{"host": "h1", "devices": [0, 1]}, {"host": "h2", "devices": [0, 1]}]},
     r"4 devices in total, but parallel dp x tp x pp = 2 ranks"),
    ({"master": {"host": "10.9.9.9", "port": 8118}}, r"master\.host='10\.9\.9\.9': the master .* must be one of"),
    ({"master": {"host": "h1", "port": 80}}, r"master\.port=80: expected an integer in 1024\.\.65535"),
    ({"ssh": {"user": "root; id"}}, r"ssh\.user='root; id': not a valid user name"),
    ({"env": {"BAD KEY": "1"}}, r"'BAD KEY' is not a valid environment variable name"),
    ({"launcher": "mpirun"}, r"launcher='mpirun': expected one of \('msrun', 'rank_table'\)"),
])
def test_bad_cluster_sections_are_refused_with_the_key_named(change, message):
    with pytest.raises(ValueError, match=r"job\.yaml: cluster.*" + message):
        parse_cluster(small(**change), 2, "job.yaml")


def test_hostile_host_in_a_job_config_is_rejected_before_anything_runs(tmp_path):
    raw = yaml.safe_load(CONFIG.read_text())
    raw["cluster"]["nodes"][1]["host"] = "a; rm -rf /"
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(JobConfigError, match=r"job\.yaml: cluster\.nodes\[1\]\.host='a; rm -rf /'"):
        load_job_config(bad)
    proc = subprocess.run([sys.executable, "-m", "mindedit", "run", "--config", str(bad), "--run-dir",
                           str(tmp_path / "run"), "--dry-run"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "not a valid host name" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_dry_run_of_the_two_node_910b_config(tmp_path):
    out = subprocess.run(["bash", "run_distributed.sh", "--config", str(CONFIG), "--run-dir", str(tmp_path),
                          "--dry-run"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "16 ranks on 2 node(s), launcher msrun, master 10.0.0.1:8118" in out
    for node in (0, 1):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith("command:") and f"--node_rank={node}" in ln)
        for flag in ("--worker_num=16", "--local_worker_num=8", "--master_addr=10.0.0.1", "--master_port=8118",
                     f"--log_dir={tmp_path}/logs/node{node}", "--join=True", "--cluster_time_out=600"):
            assert flag in line, (flag, line)
        assert ("ssh -o BatchMode=yes -p 22 -tt mindedit@10.0.0.2" in line) == (node == 1)
    assert '"HCCL_CONNECT_TIMEOUT": "600"' in out and "stage2" in out and "fits" in out
    table = json.loads((tmp_path / "rank_table.json").read_text())
    assert table["server_count"] == "2" and table["server_list"][1]["device"][0]["rank_id"] == "8"
    assert not (tmp_path / "logs").exists() and not (tmp_path / "checkpoints").exists()  # nothing started
