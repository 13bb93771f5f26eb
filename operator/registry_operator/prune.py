"""Apply `spec.retention` through the registry's API: the step that runs before `registry garbage-collect`.

Deleting a manifest needs the registry read-write, its API and `storage.delete.enabled`; garbage-collect needs
it read-only. So retention runs first, against the live registry (from the operator's image, like
`cacheflush`), and only deletes manifests: the collection that follows frees their blobs. The decision is
`retention.select`; this module only gathers its input and carries out its output, so it can be run by hand:

    python -m registry_operator.prune --config retention.json [--ca ca.crt]

The config names the registry (`registry`: https://host:port), the rules (`retention`: spec.retention as
written) and the protected references (`protected`: `tags` as repo:tag, `digests` as repo@digest, see
`inuse`). The credential comes from the environment (`USER_ENV`, `PASSWORD_ENV`), never the command line.
Basic and Bearer (token service) challenges are both answered. The last line printed is the run's summary
as JSON (`Decision.summary`): a Job's termination message, for status.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from . import retention
from .spec import Retention, parse_retention

USER_ENV, PASSWORD_ENV = "REGISTRY_USERNAME", "REGISTRY_PASSWORD"
TIMEOUT_SECONDS = 30.0
PAGE = 1000
MANIFESTS = ", ".join((
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
))
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


class RegistryError(Exception):
    """The registry refused or failed a request; the message never holds the credential."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status the registry answered, None when it did not answer


class Registry:
    """Just enough of the distribution API for retention: catalog, tags, manifests, config blobs, delete."""

    def __init__(self, base: str, user: str | None, password: str | None, ca: str | None) -> None:
        self.base = base.rstrip("/")
        self.basic = (base64.b64encode(f"{user}:{password}".encode()).decode() if user is not None else None)
        self.ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        self.tokens: dict[str, str] = {}  # scope -> bearer token
        self.scheme: str | None = None  # "basic" once the registry asked for it

    def _open(self, method: str, url: str, headers: Mapping[str, str]) -> Any:
        req = urllib.request.Request(url, method=method, headers=dict(headers))
        return urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS, context=self.ctx)

    def _token(self, challenge: str, scope: str) -> str:
        params = dict(_CHALLENGE.findall(challenge))
        query = urllib.parse.urlencode({"service": params.get("service", ""), "scope": params.get("scope", scope)})
        headers = {"Authorization": f"Basic {self.basic}"} if self.basic else {}
        try:
            with self._open("GET", f"{params['realm']}?{query}", headers) as resp:
                doc = json.load(resp)
        except (urllib.error.URLError, KeyError, ValueError) as exc:
            raise RegistryError(f"no token for {scope}: {getattr(exc, 'code', type(exc).__name__)}") from None
        return str(doc.get("token") or doc.get("access_token"))

    def request(self, method: str, path: str, scope: str, accept: str | None = None) -> tuple[bytes, Any]:
        """(body, headers) of a request answered 2xx. A 401 is answered once with what its challenge asks for
        (Basic, or a new Bearer token for `scope`, which also renews one that expired during a long run)."""
        url = path if path.startswith("http") else f"{self.base}{path}"
        headers = {"Accept": accept} if accept else {}
        retried = False
        try:
            while True:
                if self.scheme == "basic":
                    headers["Authorization"] = f"Basic {self.basic}"
                elif scope in self.tokens:
                    headers["Authorization"] = f"Bearer {self.tokens[scope]}"
                try:
                    with self._open(method, url, headers) as resp:
                        return resp.read(), resp.headers
                except urllib.error.HTTPError as exc:
                    challenge = exc.headers.get("WWW-Authenticate", "")
                    bearer = challenge.lower().startswith("bearer")
                    if exc.code != 401 or retried or not (bearer or (challenge and self.basic)):
                        raise
                    if bearer:
                        self.tokens[scope] = self._token(challenge, scope)
                    else:
                        self.scheme = "basic"
                    retried = True
        except urllib.error.HTTPError as exc:
            raise RegistryError(f"{method} {urllib.parse.urlsplit(url).path}: HTTP {exc.code}", exc.code) from None
        except urllib.error.URLError as exc:
            raise RegistryError(f"cannot reach {self.base}: {exc.reason}") from None

    def _pages(self, path: str, key: str, scope: str) -> Iterator[str]:
        url: str | None = f"{path}?n={PAGE}"
        while url:
            body, headers = self.request("GET", url, scope)
            yield from json.loads(body).get(key) or ()
            found = _NEXT.search(headers.get("Link") or "")
            url = urllib.parse.urljoin(self.base + "/", found.group(1)) if found else None

    def repositories(self) -> Iterator[str]:
        return self._pages("/v2/_catalog", "repositories", "registry:catalog:*")

    def tags(self, repo: str) -> Iterator[str]:
        """No tags for a repository the catalog lists but whose tags are all gone: on S3 no `_manifests/tags/`
        prefix is left once the last tag is deleted (a filesystem keeps the empty directory), and the registry
        answers 404 NAME_UNKNOWN, which would fail every later run of a rule that emptied a repository."""
        try:
            yield from self._pages(f"/v2/{repo}/tags/list", "tags", f"repository:{repo}:pull")
        except RegistryError as exc:
            if exc.status != 404:
                raise

    def manifest(self, repo: str, ref: str) -> tuple[str, Mapping[str, Any]]:
        body, headers = self.request("GET", f"/v2/{repo}/manifests/{ref}", f"repository:{repo}:pull", MANIFESTS)
        return headers["Docker-Content-Digest"], json.loads(body)

    def created(self, repo: str, manifest: Mapping[str, Any]) -> dt.datetime | None:
        """The image config's `created`; None for an index or a config without one."""
        config = (manifest.get("config") or {}).get("digest")
        if not config:
            return None
        body, _ = self.request("GET", f"/v2/{repo}/blobs/{config}", f"repository:{repo}:pull")
        text = json.loads(body).get("created")
        if not isinstance(text, str):
            return None
        try:  # Go writes nanoseconds; fromisoformat takes at most microseconds
            return dt.datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))
        except ValueError:
            return None

    def delete(self, repo: str, digest: str) -> None:
        self.request("DELETE", f"/v2/{repo}/manifests/{digest}", f"repository:{repo}:delete")


def gather(registry: Registry, rules: Retention) -> list[retention.Tag]:
    """Every tag of every repository the rules match, with its digest and creation time (one manifest GET
    per tag, one config GET per distinct digest)."""
    out, created = [], {}
    for repo in registry.repositories():
        if not retention.matches(repo, rules.repositories):
            continue
        for name in registry.tags(repo):
            digest, manifest = registry.manifest(repo, name)
            if (repo, digest) not in created:
                created[(repo, digest)] = registry.created(repo, manifest)
            out.append(retention.Tag(repo, name, digest, created[(repo, digest)]))
    return out


def protected(raw: Mapping[str, Any]) -> retention.Protected:
    """The config's `protected`: `tags` as repo:tag, `digests` as repo@digest."""
    tags = frozenset((t.rpartition(":")[0], t.rpartition(":")[2]) for t in raw.get("tags") or ())
    digests = frozenset((d.partition("@")[0], d.partition("@")[2]) for d in raw.get("digests") or ())
    return retention.Protected(tags, digests)


def run(config: Mapping[str, Any], registry: Registry, now: dt.datetime) -> dict[str, object]:
    """Decide, say why each shared-digest tag stays, delete (unless dryRun); the summary."""
    rules = parse_retention(config["retention"])
    assert rules is not None
    decision = retention.select(gather(registry, rules), rules, protected(config.get("protected") or {}), now)
    for ref, why in decision.kept.items():
        if why.startswith("shares its digest"):
            print(f"keeping {ref}: {why}")
    tags: dict[tuple[str, str], list[str]] = {}
    for tag in decision.deleted_tags:
        tags.setdefault((tag.repository, tag.digest), []).append(tag.name)
    for repo, digest in decision.delete:
        said = f"{repo}@{digest} (tags {', '.join(tags[(repo, digest)])})"
        if rules.dry_run:
            print(f"would delete {said}")
            continue
        registry.delete(repo, digest)
        print(f"deleted {said}")
    return decision.summary(rules.dry_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry_operator.prune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="JSON: registry, retention, protected")
    parser.add_argument("--ca", help="the CA bundle to verify the registry with (default: the system's)")
    parser.add_argument("--summary", help="also write the summary here (a pod's /dev/termination-log)")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    registry = Registry(config["registry"], os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV), args.ca)
    try:
        summary = run(config, registry, dt.datetime.now(dt.UTC))
    except RegistryError as exc:
        print(f"retention failed: {exc}", file=sys.stderr)
        return 1
    line = json.dumps(summary, sort_keys=True)
    print(line)
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
