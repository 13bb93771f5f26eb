"""Run the operator in this process with counters: `python -m bench.opwrap COUNTERS.json -- OPERATOR ARGS`.

Counted, by wrapping the functions the operator calls (so calls made in worker threads count too):
- bcrypt: `bcrypt.hashpw`, `bcrypt.checkpw`;
- key generation: cryptography's `ec/rsa.generate_private_key` and every `registry_operator.pki.issue_*`;
- API requests by client and method: lightkube (`GenericAsyncClient.send`, the operator's own calls) and kopf
  (`kopf._cogs.clients.api.request`: watches, annotation and status patches of kopf itself);
- reconciles (`registry_operator.handlers.reconcile`), with the time of the last one finished.

The counters are written to the JSON file every 0.5 s when they changed, and at exit. Nothing else changes:
same entry point, arguments and environment as `python -m registry_operator`.

For memory investigations only (it slows the process and costs memory itself): with `BENCH_TRACEMALLOC=1`,
SIGUSR1 writes the top allocation sites (grouped by file and by line) next to the counters file. SIGUSR2 calls
glibc's `malloc_trim(0)` and records VmRSS before and after in the counters (`trim`): how much of the RSS is
freed memory that the allocator kept.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

COUNTS: Counter[str] = Counter()
STATE: dict[str, float] = {"last_reconcile": 0.0, "started": time.time()}
_LOCK = threading.Lock()


def _count(key: str, n: int = 1) -> None:
    with _LOCK:
        COUNTS[key] += n


def _wrap_sync(owner: Any, attr: str, key: str) -> None:
    original: Callable[..., Any] = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _count(key)
        return original(*args, **kwargs)

    setattr(owner, attr, wrapper)


def install() -> None:
    """Patch the counted functions (idempotent enough for one call per process)."""
    import bcrypt
    import kopf._cogs.clients.api as kopf_api
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from lightkube.core.generic_client import GenericAsyncClient

    from registry_operator import handlers, pki

    _wrap_sync(bcrypt, "hashpw", "bcrypt.hashpw")
    _wrap_sync(bcrypt, "checkpw", "bcrypt.checkpw")
    _wrap_sync(ec, "generate_private_key", "keygen.ec")
    _wrap_sync(rsa, "generate_private_key", "keygen.rsa")
    for name in dir(pki):
        if name.startswith("issue_") and callable(getattr(pki, name)):
            _wrap_sync(pki, name, f"pki.{name}")

    send = GenericAsyncClient.send

    async def counted_send(self: Any, req: Any, stream: bool = False) -> Any:
        _count(f"http.lightkube.{req.method}")
        return await send(self, req, stream=stream)

    GenericAsyncClient.send = counted_send  # type: ignore[method-assign]

    request = kopf_api.request

    @functools.wraps(request)
    async def counted_request(method: str, *args: Any, **kwargs: Any) -> Any:
        _count(f"http.kopf.{method.upper()}")
        return await request(method, *args, **kwargs)

    kopf_api.request = counted_request

    reconcile = handlers.reconcile

    async def counted_reconcile(*args: Any, **kwargs: Any) -> Any:
        try:
            return await reconcile(*args, **kwargs)
        finally:
            _count("reconcile")
            STATE["last_reconcile"] = time.time()

    handlers.reconcile = counted_reconcile


def snapshot() -> dict[str, Any]:
    with _LOCK:
        return {"pid": os.getpid(), "time": time.time(), **STATE, "counts": dict(COUNTS)}


def _dump(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot()))
    tmp.replace(path)


def _tracemalloc(path: Path) -> None:
    import signal
    import tracemalloc

    tracemalloc.start(1)

    def dump(*_: Any) -> None:
        snap = tracemalloc.take_snapshot()
        lines = [f"traced {tracemalloc.get_traced_memory()[0] / 2**20:.1f} MiB"]
        for group in ("filename", "lineno"):
            lines.append(f"-- by {group}")
            lines += [str(stat) for stat in snap.statistics(group)[:40]]
        path.with_suffix(".tracemalloc.txt").write_text("\n".join(lines) + "\n")

    signal.signal(signal.SIGUSR1, dump)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _trim(*_: Any) -> None:
    import ctypes

    before = _rss_kib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    STATE["trim_before_kib"], STATE["trim_after_kib"] = before, _rss_kib()
    with _LOCK:
        COUNTS["trim"] += 1


def main() -> None:
    if len(sys.argv) < 2 or "--" not in sys.argv:
        sys.exit("usage: python -m bench.opwrap COUNTERS.json -- [operator arguments]")
    path = Path(sys.argv[1])
    operator_args = sys.argv[sys.argv.index("--") + 1 :]
    install()
    import signal

    signal.signal(signal.SIGUSR2, _trim)
    if os.environ.get("BENCH_TRACEMALLOC"):
        _tracemalloc(path)

    def writer() -> None:
        last: dict[str, int] = {}
        while True:
            with _LOCK:
                changed = COUNTS != last
                last = dict(COUNTS)
            if changed or not path.exists():
                _dump(path)
            time.sleep(0.5)

    threading.Thread(target=writer, daemon=True, name="bench-counters").start()
    atexit.register(_dump, path)
    from registry_operator.__main__ import main as operator_main

    sys.argv = ["registry-operator", *operator_args]
    operator_main()


if __name__ == "__main__":
    main()
