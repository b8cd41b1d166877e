"""The ``cluster:`` section of a job config: which nodes, which devices, how to reach them, how to launch.

    cluster:
      launcher: msrun                  # or rank_table (HCCL rank table v1.0, one process per device)
      master: {host: 10.0.0.1, port: 8118}
      nodes:
        - {host: 10.0.0.1, devices: [0, 1, 2, 3, 4, 5, 6, 7], device_ips: [...]}   # device_ips optional
        - {host: 10.0.0.2, devices: [0, 1, 2, 3, 4, 5, 6, 7]}
      ssh: {user: ..., port: 22}       # how the launching node reaches the others
      env: {HCCL_CONNECT_TIMEOUT: "600"}
      cluster_time_out: 600            # seconds a node waits for the others to join

Everything is validated before anything runs: host names and users are checked against strict patterns (they
reach ssh as arguments, never through a shell string), hosts and device IPs must be unique, the device count
must equal the parallel world size (dp x tp x pp), every node must bring the same number of devices (msrun
numbers ranks node by node), and the master must be one of the nodes. Without a cluster section a job runs on
this machine (127.0.0.1) with one CPU process per rank.
"""
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Optional

HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
                  r"[A-Za-z0-9])?)*$")
USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LAUNCHERS = ("msrun", "rank_table")


class ClusterError(ValueError):
    pass


@dataclass
class Node:
    host: str
    devices: list
    device_ips: Optional[list] = None


@dataclass
class Cluster:
    launcher: str = "msrun"
    master_host: str = "127.0.0.1"
    master_port: int = 0                  # 0: a free port chosen at launch (local runs)
    nodes: list = field(default_factory=list)
    ssh_user: Optional[str] = None
    ssh_port: int = 22
    env: dict = field(default_factory=dict)
    cluster_time_out: int = 60
    local: bool = True                    # the CPU default (no cluster section)

    @property
    def world(self) -> int:
        return sum(len(n.devices) for n in self.nodes)

    def rank_offset(self, node_index: int) -> int:
        return sum(len(n.devices) for n in self.nodes[:node_index])


def check_host(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ClusterError(f"{where}={value!r}: expected a host name or IP address")
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not HOST.match(value):
        raise ClusterError(f"{where}={value!r}: not a valid host name or IP address (letters, digits, '-' and '.' "
                           f"only)")
    return value


def _int(value, where: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ClusterError(f"{where}={value!r}: expected an integer in {lo}..{hi}")
    return value


def local_cluster(world: int) -> Cluster:
    return Cluster(nodes=[Node("127.0.0.1", list(range(world)))], local=True)


def parse_cluster(raw, world: int, where: str) -> Cluster:
    """Validates a ``cluster:`` mapping for a job of ``world`` ranks; ``where`` prefixes every error."""
    if raw is None:
        return local_cluster(world)
    w = f"{where}: cluster"
    if not isinstance(raw, dict):
        raise ClusterError(f"{w}: expected a mapping with launcher, master, nodes, ssh, env")
    unknown = sorted(set(raw) - {"launcher", "master", "nodes", "ssh", "env", "cluster_time_out"})
    if unknown:
        raise ClusterError(f"{w}.{unknown[0]}: unknown key; expected launcher, master, nodes, ssh, env, "
                           f"cluster_time_out")
    c = Cluster(local=False)
    c.launcher = raw.get("launcher", "msrun")
    if c.launcher not in LAUNCHERS:
        raise ClusterError(f"{w}.launcher={c.launcher!r}: expected one of {LAUNCHERS}")
    nodes = raw.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise ClusterError(f"{w}.nodes: expected a non-empty list of {{host, devices}}")
    seen_hosts, seen_ips = {}, {}
    for i, n in enumerate(nodes):
        wn = f"{w}.nodes[{i}]"
        if not isinstance(n, dict) or not {"host", "devices"} <= set(n):
            raise ClusterError(f"{wn}: expected a mapping with host and devices")
        bad = sorted(set(n) - {"host", "devices", "device_ips"})
        if bad:
            raise ClusterError(f"{wn}.{bad[0]}: unknown key; expected host, devices, device_ips")
        host = check_host(n["host"], f"{wn}.host")
        if host in seen_hosts:
            raise ClusterError(f"{wn}.host={host!r}: the same host as nodes[{seen_hosts[host]}]")
        seen_hosts[host] = i
        devices = n["devices"]
        if not isinstance(devices, list) or not devices:
            raise ClusterError(f"{wn}.devices: expected a non-empty list of device ids")
        for d in devices:
            _int(d, f"{wn}.devices[]", 0, 63)
        if len(set(devices)) != len(devices):
            raise ClusterError(f"{wn}.devices={devices}: a device id appears twice")
        ips = n.get("device_ips")
        if ips is not None:
            if not isinstance(ips, list) or len(ips) != len(devices):
                raise ClusterError(f"{wn}.device_ips: expected one IP per device ({len(devices)})")
            for ip in ips:
                try:
                    ipaddress.ip_address(ip)
                except (ValueError, TypeError):
                    raise ClusterError(f"{wn}.device_ips: {ip!r} is not an IP address") from None
                if ip in seen_ips:
                    raise ClusterError(f"{wn}.device_ips: {ip} is also a device IP of {seen_ips[ip]}")
                seen_ips[ip] = f"nodes[{i}]"
        c.nodes.append(Node(host, list(devices), list(ips) if ips is not None else None))
    counts = {len(n.devices) for n in c.nodes}
    if len(counts) > 1:
        raise ClusterError(f"{w}.nodes: every node must bring the same number of devices (msrun numbers ranks "
                           f"node by node); got {[len(n.devices) for n in c.nodes]}")
    if c.world != world:
        raise ClusterError(f"{w}.nodes: {c.world} devices in total, but parallel dp x tp x pp = {world} ranks")
    master = raw.get("master") or {}
    if not isinstance(master, dict) or set(master) - {"host", "port"}:
        raise ClusterError(f"{w}.master: expected {{host, port}}")
    c.master_host = check_host(master.get("host", c.nodes[0].host), f"{w}.master.host")
    if c.master_host not in seen_hosts:
        raise ClusterError(f"{w}.master.host={c.master_host!r}: the master (msrun scheduler) must be one of the "
                           f"nodes {sorted(seen_hosts)}")
    c.master_port = _int(master.get("port", 8118), f"{w}.master.port", 1024, 65535)
    ssh = raw.get("ssh") or {}
    if not isinstance(ssh, dict) or set(ssh) - {"user", "port"}:
        raise ClusterError(f"{w}.ssh: expected {{user, port}}")
    if ssh.get("user") is not None:
        if not isinstance(ssh["user"], str) or not USER.match(ssh["user"]):
            raise ClusterError(f"{w}.ssh.user={ssh['user']!r}: not a valid user name")
        c.ssh_user = ssh["user"]
    c.ssh_port = _int(ssh.get("port", 22), f"{w}.ssh.port", 1, 65535)
    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise ClusterError(f"{w}.env: expected a mapping of variable names to values")
    for k, v in env.items():
        if not isinstance(k, str) or not ENV_KEY.match(k):
            raise ClusterError(f"{w}.env: {k!r} is not a valid environment variable name")
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise ClusterError(f"{w}.env.{k}={v!r}: expected a string or a number")
        c.env[k] = str(v)
    c.cluster_time_out = _int(raw.get("cluster_time_out", 600), f"{w}.cluster_time_out", 10, 86400)
    return c
