"""The cluster's address plan and the rules that keep its traffic on this machine.

Every address is local: the control plane listens on 127.0.0.1, the real node's IP is a /32 on a bridge of its
own, pods live on another bridge. Nothing may leave the machine, so:
- the Service range is a blackhole route (a ClusterIP no kube-proxy rule caught would follow the default route);
- the egress guard, chain ``RO-EGRESS-GUARD`` first in the mangle table's FORWARD, drops anything from the pod
  range that is not for the pod range (traffic to the node's own addresses is local delivery, never forwarded).
  The mangle table because kube-proxy inserts its own rules at the top of the filter table's FORWARD and accepts
  some traffic there; neither it nor the kubelet touches mangle FORWARD, which runs first;
- pods resolve names through CoreDNS on the node IP, which has no upstream.
"""

from __future__ import annotations

from .errors import ClusterError
from .host import HostChanges, run

SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"  # the real node's share of POD_CIDR
# kwok's fake pods get addresses too, which kube-router and kube-proxy take at their word: from the same
# /16 they were the real pods' (a fake pod of another Registry, whose policy admits everyone, had the
# real netpol pod's address, and kube-router let a denied namespace in). Another share, never the node's.
KWOK_POD_CIDR = "10.244.128.0/17"
NODE_BRIDGE = "ro-node0"
NODE_IP = "10.250.0.1"
CNI_BRIDGE = "ro-cni0"
GUARD_CHAIN = "RO-EGRESS-GUARD"


def set_up(changes: HostChanges) -> None:
    """The node IP's bridge, the Service blackhole and the egress guard, each recorded before it is made."""
    changes.add_link(CNI_BRIDGE)  # made later by the CNI bridge plugin, for the first pod
    if run("ip", "link", "show", NODE_BRIDGE, check=False).returncode != 0:
        changes.add_link(NODE_BRIDGE)
        run("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
    run("ip", "addr", "replace", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
    run("ip", "link", "set", NODE_BRIDGE, "up")
    route = f"blackhole {SERVICE_CIDR}"
    if route not in run("ip", "route", "show", "type", "blackhole").stdout:
        changes.add_route(route)
        run("ip", "route", "add", *route.split())
    # The chain is new (HostChanges' iptables snapshot came first), so down removes it with its jump.
    mangle = ("iptables", "-t", "mangle")
    run(*mangle, "-N", GUARD_CHAIN, check=False)
    run(*mangle, "-F", GUARD_CHAIN)
    run(*mangle, "-A", GUARD_CHAIN, "-s", POD_CIDR, "-d", POD_CIDR, "-j", "RETURN")
    run(*mangle, "-A", GUARD_CHAIN, "-s", POD_CIDR, "-j", "DROP")
    if run(*mangle, "-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode != 0:
        run(*mangle, "-I", "FORWARD", "1", "-j", GUARD_CHAIN)


def egress_guard_problem() -> str | None:
    """Why the egress guard is not in place, or None when it is: the first rule of the mangle table's FORWARD
    jumps to it and it drops the pod range's traffic to anywhere else."""
    forward = run("iptables", "-t", "mangle", "-S", "FORWARD", check=False).stdout.splitlines()
    chain = run("iptables", "-t", "mangle", "-S", GUARD_CHAIN, check=False).stdout.splitlines()
    first = next((r for r in forward if r.startswith("-A FORWARD")), "")
    if first != f"-A FORWARD -j {GUARD_CHAIN}":
        return f"the first mangle FORWARD rule is {first!r}, not the jump to {GUARD_CHAIN}"
    wanted = [f"-A {GUARD_CHAIN} -s {POD_CIDR} -d {POD_CIDR} -j RETURN", f"-A {GUARD_CHAIN} -s {POD_CIDR} -j DROP"]
    if [r for r in chain if r.startswith("-A ")] != wanted:
        return f"{GUARD_CHAIN} holds {chain}, not {wanted}"
    return None


def assert_egress_guard() -> None:
    if problem := egress_guard_problem():
        raise ClusterError(f"the egress guard is not in place: {problem}")
