"""HCCL rank table v1.0 (Ascend 910B) and the device IPs it needs.

    {"version": "1.0", "server_count": "2", "status": "completed",
     "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...]}, ...]}

Every value is a string; rank ids are contiguous per server, servers in node order. ``host_nic_ip`` is
"reserve", as in Huawei's own generator (HCCL does not read it on 910B). Device IPs come from the config or are
read on each node from ``hccn_tool -i N -ip -g`` or ``/etc/hccn.conf``.
"""
import re

from cluster.config import Cluster, ClusterError


def parse_hccn_tool(text: str, where: str = "hccn_tool -ip -g") -> str:
    """The device IP in ``hccn_tool -i N -ip -g`` output (``ipaddr:192.168.100.101`` / ``netmask:...``)."""
    m = re.search(r"^\s*ipaddr\s*:\s*([0-9.]+)\s*$", text, re.M)
    if not m:
        raise ClusterError(f"{where}: no 'ipaddr:' line in the output:\n{text.strip()[:300]}")
    return m.group(1)


def parse_hccn_conf(text: str, where: str = "/etc/hccn.conf") -> dict:
    """{device id: IP} from /etc/hccn.conf (``address_N=IP`` lines)."""
    ips = {int(m.group(1)): m.group(2) for m in re.finditer(r"^\s*address_(\d+)\s*=\s*([0-9.]+)\s*$", text, re.M)}
    if not ips:
        raise ClusterError(f"{where}: no address_N= lines")
    return ips


def rank_table(cluster: Cluster) -> dict:
    """The v1.0 rank table of a cluster whose nodes all know their device IPs."""
    servers, rank = [], 0
    for i, node in enumerate(cluster.nodes):
        if node.device_ips is None:
            raise ClusterError(f"cluster.nodes[{i}] ({node.host}): device IPs unknown; give device_ips or let the "
                               f"launcher read them on the node (hccn_tool / /etc/hccn.conf)")
        devices = []
        for d, ip in zip(node.devices, node.device_ips):
            devices.append({"device_id": str(d), "device_ip": str(ip), "rank_id": str(rank)})
            rank += 1
        servers.append({"server_id": node.host, "host_nic_ip": "reserve", "device": devices})
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": servers, "status": "completed"}


def collect_device_ips(cluster: Cluster, read=None) -> None:
    """Fills each node's missing device_ips from its /etc/hccn.conf (``read(node) -> text``: over ssh for remote
    nodes; see cluster.launch.read_remote_file)."""
    for i, node in enumerate(cluster.nodes):
        if node.device_ips is not None:
            continue
        where = f"{node.host}:/etc/hccn.conf"
        try:
            text = read(node)
        except (OSError, RuntimeError) as e:
            raise ClusterError(f"cluster.nodes[{i}] ({node.host}): no device_ips in the config and {where} could not "
                               f"be read ({e}); give device_ips or run on the 910B servers") from None
        ips = parse_hccn_conf(text, where)
        missing = [d for d in node.devices if d not in ips]
        if missing:
            raise ClusterError(f"{where}: no address_{missing[0]}= line for device {missing[0]}")
        node.device_ips = [ips[d] for d in node.devices]
