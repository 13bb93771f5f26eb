"""Measure what a registry's storage holds (blobs, their bytes, tagged repositories): the GC Job's first and
last step.

distribution's `garbage-collect` names the blobs it deletes but never their sizes, and no registry API reports
storage use. So the GC Job measures the storage itself, with the driver settings the registry uses (its
rendered config, and the S3 keys from its environment): once before `garbage-collect` (`--save FILE`, on the
pod's emptyDir) and once after (`--before FILE`), while the registry is read-only, so nothing else changes the
storage in between and `freed = before - after` exactly, on a filesystem and in a bucket alike (a bucket is
listed with ListObjectsV2, signed with AWS Signature Version 4: the operator's image carries no S3 client, and
two read-only calls are not worth one). The last step writes a one-line JSON summary as the container's
termination message, which the operator reads from the pod's status: no log parsing, no extra permission.

What is counted, the same way on both drivers: blobs are `<root>/docker/registry/v2/blobs/**/data` objects
(layers, configs, manifests), their bytes the sum of those objects' sizes; a repository is one with at least
one tag (`_manifests/tags/<tag>/current/link`). A measurement that cannot be made (a bucket reached through
workload identity: no static keys to sign with) is reported as such and never fails the collection.
Run as `python -m registry_operator.storageusage --config PATH (--save FILE | --before FILE)`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import hmac
import json
import os
import sys
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import yaml

V2 = "docker/registry/v2/"
TERMINATION_LOG = "/dev/termination-log"
TIMEOUT_SECONDS = 30.0
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class UsageError(Exception):
    """The storage could not be measured; the message names why (never a key)."""


@dataclass(frozen=True)
class Usage:
    blobs: int
    bytes: int
    repositories: int


def tally(objects: Iterable[tuple[str, int]]) -> Usage:
    """Usage from (path relative to `docker/registry/v2/`, size) pairs, whichever driver listed them."""
    blobs = size = 0
    repositories: set[str] = set()
    for path, length in objects:
        parts = path.split("/")
        if parts[0] == "blobs" and parts[-1] == "data":
            blobs, size = blobs + 1, size + length
        elif parts[0] == "repositories" and "_manifests" in parts:
            at = parts.index("_manifests")
            # _manifests/tags/<tag>/current/link: the tag exists (an untagged repository holds no image by name).
            if parts[at + 1:at + 2] == ["tags"] and parts[at + 3:] == ["current", "link"]:
                repositories.add("/".join(parts[1:at]))
    return Usage(blobs, size, len(repositories))


def walk(root: str) -> Iterator[tuple[str, int]]:
    """Every file under `<root>/docker/registry/v2` of a filesystem driver, relative to it, with its size."""
    base = os.path.join(root, V2)
    for folder, _, files in os.walk(base):
        for name in files:
            path = os.path.join(folder, name)
            yield os.path.relpath(path, base), os.lstat(path).st_size


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def signed_get(url: str, query: Mapping[str, str], region: str, access_key: str, secret_key: str,
               now: dt.datetime, session_token: str | None = None) -> urllib.request.Request:
    """A GET with an empty body, signed with AWS Signature Version 4 for service s3."""
    parsed = urllib.parse.urlsplit(url)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
    headers = {"host": parsed.netloc, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if session_token:
        headers["x-amz-security-token"] = session_token
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["GET", urllib.parse.quote(parsed.path or "/", safe="/-_.~"), canonical_query,
                           *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _sign(_sign(_sign(_sign(f"AWS4{secret_key}".encode(), day), region), "s3"), "aws4_request")
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, "
                                f"Signature={hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()}")
    target = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path or "/", canonical_query, ""))
    return urllib.request.Request(target, headers={k: v for k, v in headers.items() if k != "host"})


def bucket_url(params: Mapping[str, Any]) -> str:
    """Where the driver's bucket answers: `regionendpoint` or AWS's regional endpoint, path- or host-style."""
    region, bucket = params.get("region") or "us-east-1", params["bucket"]
    scheme = "https" if params.get("secure", True) else "http"
    endpoint = (params.get("regionendpoint") or f"{scheme}://s3.{region}.amazonaws.com").rstrip("/")
    if params.get("forcepathstyle"):
        return f"{endpoint}/{bucket}"
    parsed = urllib.parse.urlsplit(endpoint)
    return f"{parsed.scheme}://{bucket}.{parsed.netloc}"


def s3_prefix(params: Mapping[str, Any]) -> str:
    """The key prefix the driver stores `docker/registry/v2/` under (its `rootdirectory`, as it trims it)."""
    return f"{str(params.get('rootdirectory') or '').rstrip('/')}/{V2}".lstrip("/")


def list_bucket(params: Mapping[str, Any], env: Mapping[str, str]) -> Iterator[tuple[str, int]]:
    """Every object under the registry's prefix, relative to `docker/registry/v2/`, with its size."""
    access = env.get("REGISTRY_STORAGE_S3_ACCESSKEY") or params.get("accesskey") or env.get("AWS_ACCESS_KEY_ID")
    secret = env.get("REGISTRY_STORAGE_S3_SECRETKEY") or params.get("secretkey") or env.get("AWS_SECRET_ACCESS_KEY")
    if not (access and secret):
        raise UsageError("no static S3 keys to list the bucket with (workload identity): usage not measured")
    url, prefix, region = bucket_url(params), s3_prefix(params), params.get("region") or "us-east-1"
    query = {"list-type": "2", "prefix": prefix}
    while True:
        request = signed_get(url, query, region, str(access), str(secret), dt.datetime.now(dt.UTC),
                             env.get("AWS_SESSION_TOKEN"))
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310 (config's URL)
                root = ET.fromstring(response.read())
        except OSError as exc:  # HTTPError and URLError included; their text holds no key
            raise UsageError(f"listing bucket {params['bucket']!r} failed: {exc}") from None
        for item in root.iter(f"{_S3_NS}Contents"):
            key = item.findtext(f"{_S3_NS}Key") or ""
            yield key.removeprefix(prefix), int(item.findtext(f"{_S3_NS}Size") or 0)
        token = root.findtext(f"{_S3_NS}NextContinuationToken")
        if root.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
            return
        query = {**query, "continuation-token": token}


def measure(config: Mapping[str, Any], env: Mapping[str, str]) -> Usage:
    """The usage of the storage the registry `config` names."""
    storage = config.get("storage") or {}
    if "filesystem" in storage:
        root = (storage["filesystem"] or {}).get("rootdirectory") or "/var/lib/registry"
        return tally(walk(env.get("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY") or root))
    if "s3" in storage:
        return tally(list_bucket(storage["s3"] or {}, env))
    raise UsageError("only the filesystem and s3 drivers are measured")


def summary(before: Mapping[str, Any] | None, after: Usage | UsageError) -> dict[str, Any]:
    """The termination message: usage after the collection, and what it freed when both were measured."""
    if isinstance(after, UsageError):
        return {"error": str(after)}
    out: dict[str, Any] = asdict(after)
    if before and "error" not in before:
        out["blobsFreed"] = before["blobs"] - after.blobs
        out["bytesFreed"] = before["bytes"] - after.bytes
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="registry_operator.storageusage", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the registry's config.yml")
    step = parser.add_mutually_exclusive_group(required=True)
    step.add_argument("--save", help="before the collection: write the measurement to this file")
    step.add_argument("--before", help="after the collection: the file --save wrote")
    parser.add_argument("--termination-log", default=TERMINATION_LOG, help="where the summary goes (--before)")
    args = parser.parse_args(argv)
    try:
        with open(args.config) as f:
            usage: Usage | UsageError = measure(yaml.safe_load(f) or {}, os.environ)
    except UsageError as exc:
        usage = exc
    except Exception as exc:  # noqa: BLE001 (a bad answer or config: said, never a failed collection)
        usage = UsageError(f"{type(exc).__name__}: {exc}"[:300])
    if args.save:
        with open(args.save, "w") as f:
            json.dump(summary(None, usage), f)
    else:
        try:
            with open(args.before) as f:
                before = json.load(f)
        except (OSError, ValueError):
            before = None
        line = json.dumps(summary(before, usage), separators=(",", ":"))
        with open(args.termination_log, "w") as f:
            f.write(line)
    print(json.dumps(summary(None, usage)), flush=True)  # the pod's log says what was measured, each step
    return 0  # a measurement never fails the collection it describes


if __name__ == "__main__":
    sys.exit(main())
