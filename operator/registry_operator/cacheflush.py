"""Empty the registry's Redis blob-descriptor cache: the last step of a garbage collection (`spec.redis`).

Every released distribution (2.8, 3.0, 3.1) keeps serving a blob's cached descriptor after garbage-collect has
deleted the blob. Without Redis the restart that ends a collection empties the in-memory cache; a Redis cache
outlives the restart, so the GC Job runs this after `registry garbage-collect` has finished, before the pods
go read-write. It speaks just enough RESP for AUTH, SELECT and FLUSHDB (the database is the Registry's own,
see the CRD): the operator's image carries no Redis client, and a dependency for three commands is not worth
shipping. Run as `python -m registry_operator.cacheflush --address HOST:PORT --db N`; the password, if any,
comes from the environment (`PASSWORD_ENV`, set from the user's Secret), never from the command line.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

# The registry's own variable (it overrides `redis.password`): the GC Job's flush container gets it from the
# same renderer as the registry's pods.
PASSWORD_ENV = "REGISTRY_REDIS_PASSWORD"
TIMEOUT_SECONDS = 10.0
ATTEMPTS = 5  # a Redis restarting at the wrong moment must not fail the whole collection


class RedisError(Exception):
    """Redis refused a command or could not be reached; the message never holds the password."""


def command(*args: str) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise RedisError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def flush(address: str, db: int, password: str | None, timeout: float = TIMEOUT_SECONDS) -> None:
    """AUTH (if a password is given), SELECT `db`, FLUSHDB; raises RedisError unless each answers +OK."""
    host, port = split_address(address)
    steps = ([("AUTH", command("AUTH", password))] if password else []) + [
        ("SELECT", command("SELECT", str(db))),
        ("FLUSHDB", command("FLUSHDB")),
    ]
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            replies = sock.makefile("rb")
            for name, request in steps:
                sock.sendall(request)
                reply = replies.readline().rstrip(b"\r\n").decode(errors="replace")
                if reply != "+OK":  # an error line (`-ERR ...`, `-NOAUTH ...`) or a closed connection ("")
                    raise RedisError(f"{name} failed: {reply or 'connection closed'}")
    except OSError as exc:
        raise RedisError(f"cannot reach Redis at {address}: {exc.strerror or type(exc).__name__}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry_operator.cacheflush", description=__doc__)
    parser.add_argument("--address", required=True, help="host:port of the Redis")
    parser.add_argument("--db", type=int, default=0)
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_ENV) or None
    for attempt in range(1, ATTEMPTS + 1):
        try:
            flush(args.address, args.db, password)
        except RedisError as exc:
            print(f"flushing the blob-descriptor cache (attempt {attempt}/{ATTEMPTS}): {exc}", file=sys.stderr)
            if attempt < ATTEMPTS:
                time.sleep(2 * attempt)
            continue
        print(f"flushed the blob-descriptor cache in Redis {args.address} db {args.db}")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
