"""Free loopback ports, checked the way the Go servers will bind them."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Something listens on (or is bound to) host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the Go servers do: a port in TIME_WAIT is free, a listening or bound one is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def pick_free_ports(names: Iterable[str], base: int | None = None) -> dict[str, int]:
    """Ports for the named endpoints: consecutive from base when given, else random free ports below the
    kernel's ephemeral range (so no outgoing connection grabs one between picking and binding)."""
    names = list(names)
    if base:
        return {n: base + i for i, n in enumerate(names)}
    chosen: dict[str, int] = {}
    rng = random.Random()
    while len(chosen) < len(names):
        port = rng.randint(20000, 32000)
        if port in chosen.values() or port_taken(port):
            continue
        chosen[names[len(chosen)]] = port
    return chosen
