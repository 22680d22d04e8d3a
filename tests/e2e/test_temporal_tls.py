"""keyrotor's Temporal connection over mutual TLS, as to a cluster that requires it.

The Temporal dev server speaks only plain gRPC, so the test puts a TLS endpoint in front of it:
a TLS-terminating TCP proxy (Python's ssl module, ALPN h2, client certificates required,
signed by a CA made here) that forwards the decrypted bytes to the real dev server. Everything
the client does (handshake, certificate checks, gRPC over HTTP/2) is real; only the TLS
termination is ours instead of the Temporal frontend's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from core.codec import connect_with, temporal_tls
from core.services import ConfigurationError, build_services
from core.settings import Settings
from tests.fixtures.temporal import TEST_KEYRING, TEST_MASTER_KEY, target


def _issue(
    directory: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@contextlib.asynccontextmanager
async def tls_front(directory: Path, upstream: str) -> AsyncIterator[str]:
    """A TLS endpoint (server certificate `temporal.test`, client certificates of `ca`
    required) forwarding to `upstream`; yields its address."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "temporal.test.pem", directory / "temporal.test.key")
    context.load_verify_locations(directory / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, port = upstream.rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    async with server:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    ca = _issue(tmp_path, "ca", None)
    _issue(tmp_path, "temporal.test", ca)
    _issue(tmp_path, "keyrotor-worker", ca)
    _issue(tmp_path, "stranger", None)  # a CA that did not sign the server's certificate
    return tmp_path


async def test_mutual_tls_to_temporal(dev_env: WorkflowEnvironment, certificates: Path) -> None:
    async with tls_front(certificates, target(dev_env.client)) as address:
        settings = Settings(
            temporal_address=address,
            temporal_tls_ca=certificates / "ca.pem",
            temporal_tls_cert=certificates / "keyrotor-worker.pem",
            temporal_tls_key=certificates / "keyrotor-worker.key",
            temporal_tls_server_name="temporal.test",
            master_key=SecretStr(TEST_MASTER_KEY),
        )
        client = await connect_with(settings, TEST_KEYRING)
        assert await client.service_client.check_health()
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        assert info.server_version

        # without a client certificate the endpoint refuses the handshake
        without = settings.model_copy(update={"temporal_tls_cert": None, "temporal_tls_key": None})
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(connect_with(without, TEST_KEYRING), 30)
        # nor does the client trust a server its CA did not sign
        stranger = settings.model_copy(update={"temporal_tls_ca": certificates / "stranger.pem"})
        with pytest.raises(RuntimeError):
            await asyncio.wait_for(connect_with(stranger, TEST_KEYRING), 30)


def test_tls_settings_that_cannot_work_stop_the_start(tmp_path: Path) -> None:
    base = {"data_dir": tmp_path, "master_key": SecretStr(TEST_MASTER_KEY)}
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigurationError, match="KEYROTOR_TEMPORAL_TLS_CA: cannot read"):
        build_services(Settings(**base, temporal_tls_ca=missing))
    with pytest.raises(ConfigurationError, match="go together"):
        build_services(Settings(**base, temporal_tls_cert=missing))


def test_a_server_name_alone_turns_tls_on() -> None:
    """KEYROTOR_TEMPORAL_TLS_SERVER_NAME without a CA: TLS with the system's roots, checking
    that name (it was once ignored, and the connection went out in plain text)."""
    tls = temporal_tls(Settings(temporal_tls_server_name="temporal.example"))
    assert isinstance(tls, TLSConfig)
    assert (tls.domain, tls.server_root_ca_cert, tls.client_cert) == (
        "temporal.example",
        None,
        None,
    )
    assert temporal_tls(Settings()) is False
    assert temporal_tls(Settings(temporal_tls=True)) is True
