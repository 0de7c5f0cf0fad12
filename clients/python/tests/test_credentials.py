"""The Python client's credentials against sidecars that require tokens and serve TLS (and mTLS)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
from conftest import Harness
from rulesidecar.client import TLS, Client, SidecarError, TokenFile, TokenSource

EXTRACTIONS = [{"variable": "status", "path": "order.status", "required": True}]
DOCUMENT = {"order": {"status": "shipped"}}


def tls_of(harness: Harness, *, client_certificate: bool = False) -> TLS:
    if client_certificate:
        return TLS(
            ca_file=harness.ca_file,
            cert_file=harness.client_cert_file,
            key_file=harness.client_key_file,
        )
    return TLS(ca_file=harness.ca_file)


def secure(harness: Harness, token: TokenSource | None = None) -> Client:
    """A client of the TLS sidecar that trusts the harness's CA."""
    return Client(harness.secure_sidecar, token=token, tls=tls_of(harness))


def extract_status(sidecar: Client) -> object:
    return sidecar.extract_variables(EXTRACTIONS, DOCUMENT).variables["status"]


def refusal(sidecar: Client) -> grpc.StatusCode:
    with pytest.raises(SidecarError) as refused:
        extract_status(sidecar)
    return refused.value.code()


def replace_file(path: Path, text: str) -> None:
    """Write as the kubelet does: a new file renamed over the old one."""
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


def test_the_right_tokens_over_tls_are_accepted(harness: Harness) -> None:
    connector = {
        "id": "py-secure",
        "status": "CONNECTOR_STATUS_LIVE",
        "urlTemplate": "https://x.test/",
    }
    with Client(
        harness.secure_sidecar, token=harness.evaluation_token, tls=tls_of(harness)
    ) as reader:
        assert extract_status(reader) == "shipped"
    with Client(harness.secure_sidecar, token=harness.admin_token, tls=tls_of(harness)) as admin:
        assert admin.register_connector(connector).connector.id == "py-secure"
        assert admin.delete_connector("py-secure") == 1


def test_no_token_or_a_wrong_one_is_unauthenticated(harness: Harness) -> None:
    with secure(harness) as anonymous:
        assert refusal(anonymous) == grpc.StatusCode.UNAUTHENTICATED
    with secure(harness, harness.admin_token[::-1]) as wrong:
        assert refusal(wrong) == grpc.StatusCode.UNAUTHENTICATED


def test_the_evaluation_token_may_not_register(harness: Harness) -> None:
    connector = {
        "id": "py-denied",
        "status": "CONNECTOR_STATUS_LIVE",
        "urlTemplate": "https://x.test/",
    }
    with (
        Client(
            harness.secure_sidecar, token=harness.evaluation_token, tls=tls_of(harness)
        ) as reader,
        pytest.raises(SidecarError) as refused,
    ):
        reader.register_connector(connector)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_rotated_token_file_is_read_again(harness: Harness, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("an-old-token-000000000\n")
    with Client(
        harness.secure_sidecar, token=TokenFile(token_file), tls=tls_of(harness)
    ) as sidecar:
        before = refusal(sidecar)
        replace_file(token_file, harness.evaluation_token + "\n")
        after = extract_status(sidecar)
    assert (before, after) == (grpc.StatusCode.UNAUTHENTICATED, "shipped")


def test_a_token_callable_is_asked_before_every_call(harness: Harness) -> None:
    tokens = iter([harness.evaluation_token, "revoked-token-0000000000"])
    with secure(harness, lambda: next(tokens)) as sidecar:
        assert extract_status(sidecar) == "shipped"
        assert refusal(sidecar) == grpc.StatusCode.UNAUTHENTICATED


def test_mtls_needs_the_client_certificate(harness: Harness) -> None:
    certified = tls_of(harness, client_certificate=True)
    with Client(harness.mtls_sidecar, token=harness.evaluation_token, tls=certified) as sidecar:
        assert extract_status(sidecar) == "shipped"
    with Client(
        harness.mtls_sidecar, token=harness.evaluation_token, tls=tls_of(harness), timeout=2.0
    ) as uncertified:
        assert refusal(uncertified) == grpc.StatusCode.UNAVAILABLE


def test_the_client_certificate_as_bytes(harness: Harness) -> None:
    tls = TLS(
        ca=Path(harness.ca_file).read_bytes(),
        cert=Path(harness.client_cert_file).read_bytes(),
        key=Path(harness.client_key_file).read_bytes(),
    )
    with Client(harness.mtls_sidecar, token=harness.evaluation_token, tls=tls) as sidecar:
        assert extract_status(sidecar) == "shipped"


def test_a_server_the_ca_does_not_vouch_for_is_unavailable(harness: Harness) -> None:
    # The system's roots do not know the harness's throwaway CA.
    with Client(
        harness.secure_sidecar, token=harness.evaluation_token, tls=TLS(), timeout=2.0
    ) as sidecar:
        assert refusal(sidecar) == grpc.StatusCode.UNAVAILABLE


def test_a_token_in_plaintext_goes_to_loopback_only(harness: Harness) -> None:
    # The plain sidecar requires no token: the call shows the token is accepted on loopback.
    with Client(harness.sidecar, token=harness.evaluation_token) as local:
        assert extract_status(local) == "shipped"
    with pytest.raises(ValueError, match="allow_token_without_tls"):
        Client("rules.internal:50051", token=harness.evaluation_token)
    Client("rules.internal:50051", token=harness.admin_token, allow_token_without_tls=True).close()
