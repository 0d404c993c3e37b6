"""End to end over TLS, like Gajim or Conversations: a slixmpp client logs in to a Prosody
that requires STARTTLS, verifies the server certificate against a throw-away CA made at test
time (``Prosody(tls=True)``, fixture ``prosody_tls``), finds ``serve`` (a subprocess on the
plaintext component port) through the server's disco#items and uploads a file to SeaweedFS."""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from slixmpp import ClientXMPP

from helpers import UPLOAD_JID, ClientPool, seaweedfs_s3, serve_config, upload_and_fetch
from servers import Prosody, SeaweedFS

MAX_FILE_SIZE = 64 * 1024
STREAM_NS = "http://etherx.jabber.org/streams"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"


@pytest.fixture(scope="module")
def service(prosody_tls: Prosody, seaweedfs: SeaweedFS, start_serve: Any) -> Any:
    """``serve`` behind the TLS Prosody; tests wait for it through disco#info."""
    return start_serve(serve_config(prosody_tls, seaweedfs_s3(seaweedfs), max_file_size=MAX_FILE_SIZE))


class Outcome:
    """The first of session_start / failed_all_auth / disconnected (``first``), and the data
    of the first occurrence of each event watched (``seen[name]``, a future)."""

    ENDINGS = ("session_start", "failed_all_auth", "disconnected")

    def __init__(self, xmpp: ClientXMPP) -> None:
        loop = asyncio.get_running_loop()
        self.first: asyncio.Future[tuple[str, Any]] = loop.create_future()
        # Handling ssl_invalid_chain also stops slixmpp from calling disconnect() itself.
        self.seen: dict[str, asyncio.Future[Any]] = {
            name: loop.create_future() for name in (*self.ENDINGS, "ssl_cert", "ssl_invalid_chain")
        }
        for name in self.seen:
            xmpp.add_event_handler(name, lambda data, name=name: self._event(name, data))

    def _event(self, name: str, data: Any) -> None:
        if not self.seen[name].done():
            self.seen[name].set_result(data)
        if name in self.ENDINGS and not self.first.done():
            self.first.set_result((name, data))

    def happened(self, name: str) -> bool:
        return self.seen[name].done()


class TlsClients(ClientPool):
    """slixmpp clients that log in with STARTTLS only (no direct TLS, no plaintext)."""

    async def connect(
        self, server: Prosody, user: str = "alice", *, trust: bool = True, timeout: float = 10
    ) -> tuple[ClientXMPP, Outcome]:
        xmpp = self._new_client(server, user)
        xmpp.enable_starttls = True
        xmpp.enable_plaintext = False
        if trust:
            # slixmpp loads this into its own ssl_context (CERT_REQUIRED, check_hostname) at
            # STARTTLS time, on top of the system CAs; the name checked is the JID's domain.
            xmpp.ca_certs = Path(server.ca_path)
        outcome = Outcome(xmpp)
        xmpp.connect("127.0.0.1", server.c2s_port)
        await asyncio.wait_for(asyncio.shield(outcome.first), timeout)
        return xmpp, outcome


@pytest.fixture
async def tls_clients() -> AsyncIterator[TlsClients]:
    async with TlsClients() as clients:
        yield clients


def assert_encrypted(xmpp: ClientXMPP, server: Prosody, outcome: Outcome) -> None:
    """The live stream is TLS, verified, and the peer is the certificate Prosody was given."""
    assert "starttls" in xmpp.features
    ssl_object = xmpp.transport.get_extra_info("ssl_object")
    assert ssl_object is not None
    assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
    assert ssl_object.context.verify_mode == ssl.CERT_REQUIRED and ssl_object.context.check_hostname
    assert ssl_object.server_hostname == "localhost"
    served = ssl_object.getpeercert(binary_form=True)
    assert served == ssl.PEM_cert_to_DER_cert(server.cert_path.read_text())
    assert outcome.seen["ssl_cert"].result() == ssl.DER_cert_to_PEM_cert(served)


async def test_starttls_login_then_upload(
    service: Any, prosody_tls: Prosody, tls_clients: TlsClients, tmp_path: Path
) -> None:
    xmpp, outcome = await tls_clients.connect(prosody_tls, "alice")
    assert outcome.first.result()[0] == "session_start"
    assert_encrypted(xmpp, prosody_tls, outcome)
    await tls_clients.wait_for_service(xmpp, UPLOAD_JID)

    path = tmp_path / "over tls.bin"
    path.write_bytes(secrets.token_bytes(MAX_FILE_SIZE))
    url = await upload_and_fetch(xmpp, path)
    assert url.endswith("/over%20tls.bin")
    assert service.running
    assert xmpp.transport.get_extra_info("ssl_object") is not None  # still the same TLS stream


async def test_untrusted_certificate_is_refused(prosody_tls: Prosody, tls_clients: TlsClients) -> None:
    """Without the test CA (only the system's) the handshake fails, and there is no login."""
    xmpp, outcome = await tls_clients.connect(prosody_tls, "bob", trust=False, timeout=5)
    reason = await asyncio.wait_for(outcome.seen["disconnected"], 5)
    assert isinstance(reason, ssl.SSLCertVerificationError), reason
    assert reason.verify_code == 20, reason  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    error = await asyncio.wait_for(outcome.seen["ssl_invalid_chain"], 5)
    assert isinstance(error, ssl.SSLCertVerificationError), error
    assert not outcome.happened("session_start") and not outcome.happened("ssl_cert")
    assert "starttls" not in xmpp.features and xmpp.transport is None


def test_no_authentication_before_tls(prosody_tls: Prosody) -> None:
    """A plaintext stream is offered STARTTLS (required) and no SASL mechanism at all."""
    with socket.create_connection(("127.0.0.1", prosody_tls.c2s_port), timeout=5) as sock:
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
            b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        parser = ET.XMLPullParser(("end",))
        features = None
        while features is None:
            data = sock.recv(4096)
            assert data, "stream closed before <stream:features/>"
            parser.feed(data)
            for _, element in parser.read_events():
                if element.tag == f"{{{STREAM_NS}}}features":
                    features = element
    starttls = features.find(f"{{{TLS_NS}}}starttls")
    assert starttls is not None and starttls.find(f"{{{TLS_NS}}}required") is not None
    assert features.find(f"{{{SASL_NS}}}mechanisms") is None, ET.tostring(features)
