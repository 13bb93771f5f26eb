"""Runtime wiring: config reloads re-point the htpasswd and signing watchers, or keep the old ones."""

from collections.abc import Callable
from typing import Any

from registry_operator.pki import issue_signing
from registry_operator.token.runtime import Runtime


def test_config_can_point_at_a_new_htpasswd_file(
    mounted: Any, kubelet_volume: Callable[[str], Any], make_htpasswd: Callable[..., str]
) -> None:
    runtime = Runtime(mounted.config_path)
    assert "alice" in runtime.htpasswd().hashes
    other = kubelet_volume("other-auth")
    other.write({"htpasswd": make_htpasswd({"zed": "pw"})})
    mounted.write_config(htpasswdPath=other.path("htpasswd"))
    runtime.config()
    assert set(runtime.htpasswd().hashes) == {"zed"}


def test_unusable_new_paths_keep_the_previous_files(mounted: Any) -> None:
    runtime = Runtime(mounted.config_path)
    signer = runtime.signer()
    mounted.write_config(htpasswdPath="/nonexistent/htpasswd", signingKeyPath="/nonexistent/tls.key", ttlSeconds=90)
    assert runtime.config().ttl_seconds == 90
    assert "alice" in runtime.htpasswd().hashes and runtime.signer() is signer


def test_algorithm_change_needs_a_matching_key(mounted: Any, kubelet_volume: Callable[[str], Any]) -> None:
    runtime = Runtime(mounted.config_path)
    mounted.write_config(algorithm="RS256")  # the mounted key is EC: keep signing with it
    assert runtime.signer().algorithm == "ES256" and runtime.signer().algorithm == "ES256"
    rsa = issue_signing("RS256")
    mounted.signing.write({"tls.key": rsa.key_pem, "tls.crt": rsa.cert_pem})  # the Secret follows later
    assert runtime.signer().algorithm == "RS256"
