"""The GC Job's storage measurement: what counts as a blob and a repository, on a real directory tree, and the
S3 request it signs (AWS's own Signature Version 4 example; the e2e tests list a real versitygw bucket)."""

import datetime as dt
import json
from pathlib import Path

from registry_operator import storageusage as su

V2 = "docker/registry/v2"


def _put(root: Path, relative: str, size: int) -> None:
    path = root / V2 / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def _layout(root: Path) -> None:
    _put(root, "blobs/sha256/ab/ab12/data", 1000)
    _put(root, "blobs/sha256/cd/cd34/data", 24)
    _put(root, "repositories/team/app/_manifests/tags/v1/current/link", 71)
    _put(root, "repositories/team/app/_manifests/tags/v1/index/sha256/ab12/link", 71)
    _put(root, "repositories/team/app/_layers/sha256/cd34/link", 71)
    _put(root, "repositories/untagged/_manifests/revisions/sha256/ab12/link", 71)  # no tag: no image by name
    _put(root, "repositories/team/app/_uploads/u1/data", 5000)  # an unfinished upload is no blob yet


def test_filesystem_usage_counts_blob_data_and_tagged_repositories(tmp_path):
    _layout(tmp_path)
    assert su.tally(su.walk(str(tmp_path))) == su.Usage(blobs=2, bytes=1024, repositories=1)
    assert su.tally(su.walk(str(tmp_path / "empty"))) == su.Usage(0, 0, 0)  # nothing pushed yet


def test_before_and_after_steps_report_what_was_freed(tmp_path):
    _layout(tmp_path)
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}\n")
    before, message = tmp_path / "before.json", tmp_path / "message"
    assert su.main(["--config", str(config), "--save", str(before)]) == 0
    (tmp_path / V2 / "blobs/sha256/ab/ab12/data").unlink()
    assert su.main(["--config", str(config), "--before", str(before), "--termination-log", str(message)]) == 0
    assert json.loads(message.read_text()) == {"blobs": 1, "bytes": 24, "repositories": 1, "blobsFreed": 1,
                                               "bytesFreed": 1000}
    assert len(message.read_text()) < 200  # a termination message holds 4096 bytes at most


def test_a_bucket_without_static_keys_is_reported_unmeasured_and_does_not_fail(tmp_path, monkeypatch):
    for name in ("REGISTRY_STORAGE_S3_ACCESSKEY", "REGISTRY_STORAGE_S3_SECRETKEY", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config.yml"
    config.write_text("storage:\n  s3: {bucket: b, region: eu-west-1}\n")
    message = tmp_path / "message"
    assert su.main(["--config", str(config), "--before", str(tmp_path / "none"), "--termination-log",
                    str(message)]) == 0
    assert "workload identity" in json.loads(message.read_text())["error"]


def test_s3_addressing_follows_the_driver_settings():
    assert su.bucket_url({"bucket": "b", "region": "eu-west-1"}) == "https://b.s3.eu-west-1.amazonaws.com"
    assert su.bucket_url({"bucket": "b", "regionendpoint": "http://127.0.0.1:9000/", "forcepathstyle": True}
                         ) == "http://127.0.0.1:9000/b"
    assert su.s3_prefix({"rootdirectory": "/team/"}) == "team/docker/registry/v2/"
    assert su.s3_prefix({}) == "docker/registry/v2/"


def test_list_request_is_signed_as_aws_documents():
    # AWS S3 docs, "Example: GET Bucket (List Objects)": GET /?max-keys=2&prefix=J on examplebucket.
    request = su.signed_get("https://examplebucket.s3.amazonaws.com", {"max-keys": "2", "prefix": "J"},
                            "us-east-1", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                            dt.datetime(2013, 5, 24, tzinfo=dt.UTC))
    assert request.full_url == "https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J"
    assert request.get_header("Authorization").endswith(
        "SignedHeaders=host;x-amz-content-sha256;x-amz-date,"
        " Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7")


def test_an_unreadable_answer_is_reported_not_raised(tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("storage: {s3: {bucket: b, regionendpoint: 'http://127.0.0.1:1', forcepathstyle: true, "
                      "accesskey: AK, secretkey: SK}}\n")  # nothing listens on port 1
    message = tmp_path / "message"
    assert su.main(["--config", str(config), "--before", str(tmp_path / "none"), "--termination-log",
                    str(message)]) == 0
    assert "listing bucket 'b' failed" in json.loads(message.read_text())["error"]
    assert su.main(["--config", str(tmp_path / "missing.yml"), "--save", str(tmp_path / "before")]) == 0
    assert "FileNotFoundError" in json.loads((tmp_path / "before").read_text())["error"]
