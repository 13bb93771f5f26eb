"""Whether the registry's Redis cache (`spec.redis`) answers and is set up as a cache: one bounded exchange per
reconcile, never a retry.

The registry falls back to its storage when Redis does not answer, and stays Ready (`GET /` has no Redis
check), so a broken cache would go unnoticed except as slower pulls. This probe says so in the `Redis`
condition: the operator connects as the pods do (AUTH with the password from the user's Secret, SELECT the
db), then reads `INFO memory`, because a Redis whose `maxmemory-policy` is not `allkeys-lru` refuses writes
(noeviction, the default) or keeps stale keys once full instead of evicting. Like the upstream probe it runs
when the Registry is reconciled anyway: a Redis that stays down costs one status write, nothing after.

The operator's network position is not the pod's: the condition says what the operator saw.
"""

from __future__ import annotations

import asyncio

from .cacheflush import RedisError, command, split_address
from .material import Problem
from .spec import Redis

TIMEOUT_SECONDS = 5.0
POLICY = "allkeys-lru"


async def _reply(reader: asyncio.StreamReader) -> str:
    """One reply as text: a status or error line, or a bulk string's content."""
    line = (await reader.readline()).rstrip(b"\r\n").decode(errors="replace")
    if line.startswith("$") and line[1:].isdigit():
        return (await reader.readexactly(int(line[1:]) + 2))[:-2].decode(errors="replace")
    return line


async def _exchange(redis: Redis, password: str | None) -> Problem | None:
    host, port = split_address(redis.address)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if password:
            writer.write(command("AUTH", password))
            if (reply := await _reply(reader)) != "+OK":
                return Problem("RedisAuthFailed", f"Redis {redis.address} refused the password of "
                                                  f"redis.passwordSecretRef ({reply.split(' ', 1)[0]})")
        writer.write(command("SELECT", str(redis.db)))
        if (reply := await _reply(reader)) != "+OK":
            reason = "RedisAuthRequired" if reply.startswith("-NOAUTH") else "RedisUnusable"
            return Problem(reason, f"Redis {redis.address}: SELECT {redis.db} failed ({reply})")
        writer.write(command("INFO", "memory"))
        info = dict(line.split(":", 1) for line in (await _reply(reader)).splitlines() if ":" in line)
    finally:
        writer.close()
    policy = info.get("maxmemory_policy")
    if policy != POLICY:
        return Problem("RedisNotACache", f"Redis {redis.address} runs maxmemory-policy {policy}: a cache needs "
                                         f"{POLICY} (and a maxmemory), else it refuses writes or keeps stale keys")
    return None


async def probe(redis: Redis, password: str | None, timeout: float = TIMEOUT_SECONDS) -> Problem | None:
    """None if the Redis answers as a cache should; else what is wrong (never the password)."""
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(redis, password)
    except TimeoutError:
        return Problem("RedisUnreachable", f"Redis {redis.address}: no answer within {timeout:g} s")
    except OSError as exc:
        return Problem("RedisUnreachable", f"Redis {redis.address}: cannot connect ({exc.strerror or exc})")
    except RedisError as exc:
        return Problem("RedisUnusable", str(exc))
    except (asyncio.IncompleteReadError, ValueError):
        return Problem("RedisUnusable", f"Redis {redis.address}: the answer is not Redis' protocol")
