"""TLS helpers for tests and demos: a throw-away CA with certificates, and a TLS echo server.

:func:`make_test_certificates` uses ``trustme`` (a test dependency, imported
only when called) to create a private CA, a server certificate for
``localhost``, ``127.0.0.1`` and ``::1``, and a client certificate for mutual
TLS, written as PEM files into a directory (a temporary one, removed by
:meth:`CertificateKit.close`, unless you pass your own). The kit can issue
more server and client certificates (expired, not yet valid, wrong host name)
for failure tests, and builds the matching server ``SSLContext`` (optionally
requiring a client certificate) and client
:class:`~nexus_green.transport.tls.TLSConfig`.

:class:`TLSEchoServer` is a loopback gevent server that echoes every byte
back, with TLS when given an ``SSLContext`` (plain TCP otherwise).

Example::

    >>> from gevent import socket
    >>> from nexus_green.transport.tls import wrap
    >>> with make_test_certificates() as certs, TLSEchoServer(certs.server_context()) as server:
    ...     raw = socket.create_connection(server.address, timeout=5)
    ...     s = wrap(raw, certs.client_config(), "127.0.0.1", 5.0)
    ...     s.sendall(b"hello"); echoed = s.recv(5); s.close()
    >>> echoed
    b'hello'
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import gevent
import gevent.ssl
from gevent import subprocess as gsubprocess
from gevent.server import StreamServer

from ..transport.tls import TLSConfig

__all__ = ["CertificateKit", "make_test_certificates", "openssl_s_server", "TLSEchoServer"]

DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")


class CertificateKit:
    """A private CA plus server and client certificates as PEM files in ``directory``.

    Attributes: ``ca`` (the ``trustme.CA``), ``ca_file``, ``server_cert_file``
    (leaf + chain), ``server_key_file``, ``server_der`` (the leaf, DER),
    ``client_cert_file``, ``client_key_file``, ``hostnames``.

    Example::

        >>> with make_test_certificates() as kit:
        ...     os.path.exists(kit.ca_file), kit.hostnames
        (True, ('localhost', '127.0.0.1', '::1'))
    """

    def __init__(self, directory: str, hostnames: tuple[str, ...], *, owns_directory: bool) -> None:
        import trustme

        self.directory = directory
        self.hostnames = hostnames
        self._owns_directory = owns_directory
        self.ca = trustme.CA()
        self.ca_file = self._path("ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.server_cert_file, self.server_key_file, self.server_der = self.issue_server_cert(*hostnames, name="server")
        client = self.ca.issue_cert("client.nexus.test", common_name="nexus-green test client")
        self.client_cert_file = self._path("client.pem")
        self.client_key_file = self._path("client.key")
        self._write_chain(client, self.client_cert_file)
        client.private_key_pem.write_to_path(self.client_key_file)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @staticmethod
    def _write_chain(leaf: Any, path: str) -> None:
        for i, blob in enumerate(leaf.cert_chain_pems):
            blob.write_to_path(path, append=i > 0)

    def issue_server_cert(
        self,
        *hostnames: str,
        name: str,
        not_after: Optional[datetime.datetime] = None,
        not_before: Optional[datetime.datetime] = None,
    ) -> tuple[str, str, bytes]:
        """Issue another server certificate from this CA; returns ``(cert_file, key_file, der)``.

        Example (an expired certificate for failure tests)::

            >>> import datetime
            >>> with make_test_certificates() as kit:
            ...     past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
            ...     cert, key, der = kit.issue_server_cert("localhost", name="old", not_after=past)
            ...     os.path.basename(cert), len(der) > 100
            ('old.pem', True)
        """
        leaf = self.ca.issue_cert(*hostnames, not_after=not_after, not_before=not_before)
        cert_file, key_file = self._path(f"{name}.pem"), self._path(f"{name}.key")
        self._write_chain(leaf, cert_file)
        leaf.private_key_pem.write_to_path(key_file)
        der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode("ascii"))
        return cert_file, key_file, der

    def issue_client_cert(
        self,
        name: str,
        *,
        not_after: Optional[datetime.datetime] = None,
        not_before: Optional[datetime.datetime] = None,
    ) -> tuple[str, str]:
        """Issue another client certificate from this CA; returns ``(cert_file, key_file)``.

        Pass them to :meth:`client_config` (``cert_file=``, ``key_file=``).
        An expired or not yet valid one makes a server that checks client
        certificates refuse it (alerts ``certificate_expired`` and
        ``bad_certificate`` from OpenSSL servers).

        Example::

            >>> import datetime
            >>> with make_test_certificates() as kit:
            ...     past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
            ...     cert, key = kit.issue_client_cert("old-client", not_after=past)
            ...     os.path.basename(cert), os.path.basename(key)
            ('old-client.pem', 'old-client.key')
        """
        leaf = self.ca.issue_cert(
            f"{name}.nexus.test", common_name=f"nexus-green {name}", not_after=not_after, not_before=not_before
        )
        cert_file, key_file = self._path(f"{name}.pem"), self._path(f"{name}.key")
        self._write_chain(leaf, cert_file)
        leaf.private_key_pem.write_to_path(key_file)
        return cert_file, key_file

    def issue_custom_cert(
        self,
        name: str,
        *,
        common_name: Optional[str] = None,
        dns_names: tuple[str, ...] = (),
        ip_addresses: tuple[str, ...] = (),
        not_before: Optional[datetime.datetime] = None,
        not_after: Optional[datetime.datetime] = None,
        self_signed: bool = False,
    ) -> tuple[str, str, bytes]:
        """Issue a deliberately odd server certificate; returns ``(cert_file, key_file, der)``.

        For diagnostics tests, where a certificate must be wrong in several
        ways at once: ``self_signed`` signs it with its own key (issuer =
        subject) instead of this CA's; without ``dns_names`` and
        ``ip_addresses`` it has no subjectAltName at all, only the subject CN
        (``common_name``); ``not_before`` / ``not_after`` default to one day
        ago and 30 days from now. The key is an EC P-256 key.

        Example (a self-signed, expired certificate for another host)::

            >>> import datetime
            >>> from cryptography import x509
            >>> with make_test_certificates() as kit:
            ...     past = datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc)
            ...     cert, key, der = kit.issue_custom_cert("bad", common_name="other.test", dns_names=("other.test",),
            ...                                            not_after=past, self_signed=True)
            ...     c = x509.load_der_x509_certificate(der)
            >>> c.issuer == c.subject, c.not_valid_after_utc.year, os.path.basename(cert)
            (True, 2021, 'bad.pem')
        """
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        not_before = not_before if not_before is not None else now - datetime.timedelta(days=1)
        not_after = not_after if not_after is not None else now + datetime.timedelta(days=30)
        if not_before >= not_after:
            not_before = not_after - datetime.timedelta(days=1)  # an expired certificate was valid once
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or name)])
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        ca_key: Any = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), password=None)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if dns_names or ip_addresses:
            entries: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
            entries += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
        cert = builder.sign(key if self_signed else ca_key, hashes.SHA256())
        cert_file, key_file = self._path(f"{name}.pem"), self._path(f"{name}.key")
        with open(cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_file, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        return cert_file, key_file, cert.public_bytes(serialization.Encoding.DER)

    def server_context(
        self,
        *,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
        require_client_cert: bool = False,
        min_version: Optional[ssl.TLSVersion] = None,
        max_version: Optional[ssl.TLSVersion] = None,
    ) -> ssl.SSLContext:
        """A server ``SSLContext`` with the server certificate (or ``cert_file``/``key_file``).

        ``require_client_cert`` asks for a client certificate issued by this
        CA (mutual TLS) and refuses the handshake without one;
        ``min_version`` / ``max_version`` bound the protocol. A server that
        requires a client certificate refuses a missing or unacceptable one
        during the handshake with TLS 1.2 (``max_version=TLSv1_2``), and
        after the client finished its handshake with TLS 1.3
        (``min_version=TLSv1_3``): the client then learns it on its first read.

        Example::

            >>> with make_test_certificates() as kit:
            ...     ctx = kit.server_context(require_client_cert=True, min_version=ssl.TLSVersion.TLSv1_3)
            ...     ctx.verify_mode == ssl.CERT_REQUIRED, ctx.minimum_version.name
            (True, 'TLSv1_3')
        """
        ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file or self.server_cert_file, key_file or self.server_key_file)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self.ca_file)
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx

    def client_config(self, **overrides: Any) -> TLSConfig:
        """A :class:`TLSConfig` trusting this CA and presenting the client certificate.

        Example::

            >>> with make_test_certificates() as kit:
            ...     kit.client_config(check_hostname=False).check_hostname
            False
        """
        options: dict[str, Any] = {
            "ca_file": self.ca_file,
            "cert_file": self.client_cert_file,
            "key_file": self.client_key_file,
        }
        options.update(overrides)
        return TLSConfig(**options)

    def close(self) -> None:
        """Remove the directory if this kit created it (idempotent)."""
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> CertificateKit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_test_certificates(
    directory: Optional[str] = None, *, hostnames: tuple[str, ...] = DEFAULT_HOSTNAMES
) -> CertificateKit:
    """Create a CA, a server certificate for ``hostnames`` and a client certificate.

    Files go to ``directory`` (kept), or to a new temporary directory removed
    by ``close()`` / the ``with`` block. Needs ``trustme`` installed.

    Example::

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     kit = make_test_certificates(d, hostnames=("nexus.test",))
        ...     sorted(os.listdir(d))
        ['ca.pem', 'client.key', 'client.pem', 'server.key', 'server.pem']
    """
    if directory is None:
        return CertificateKit(tempfile.mkdtemp(prefix="nexus-green-certs-"), hostnames, owns_directory=True)
    return CertificateKit(directory, hostnames, owns_directory=False)


class TLSEchoServer:
    """A loopback server that echoes bytes back; TLS when ``ssl_context`` is given.

    ``handshake_failures`` counts TLS handshakes that failed on the server
    side; ``client_certs`` holds the subject of every client certificate seen
    (mutual TLS). ``stop()`` closes every connection.

    Example::

        >>> from gevent import socket
        >>> with TLSEchoServer() as server:         # plain TCP echo
        ...     s = socket.create_connection(server.address, timeout=5)
        ...     s.sendall(b"x"); data = s.recv(1); s.close()
        >>> data
        b'x'
    """

    def __init__(self, ssl_context: Optional[ssl.SSLContext] = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.ssl_context = ssl_context
        self.handshake_failures = 0
        self.connections = 0
        self.client_certs: list[Any] = []
        self._socks: set[Any] = set()
        self._handlers: set[gevent.Greenlet] = set()
        self._server = StreamServer((host, port), self._handle)

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the server listens on."""
        addr = self._server.address
        return (str(addr[0]), int(addr[1]))

    def start(self) -> TLSEchoServer:
        """Start listening; returns self."""
        self._server.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listener and every connection, wait for the handlers."""
        self._server.close()
        for s in list(self._socks):
            s.close()
        handlers = list(self._handlers)
        gevent.joinall(handlers, timeout=timeout)
        gevent.killall(handlers, timeout=timeout)
        self._server.stop(timeout=timeout)

    def __enter__(self) -> TLSEchoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handle(self, raw: Any, addr: Any) -> None:
        me = gevent.getcurrent()
        self._handlers.add(me)
        self.connections += 1
        sock = raw
        self._socks.add(raw)
        try:
            if self.ssl_context is not None:
                try:
                    tls = self.ssl_context.wrap_socket(sock, server_side=True)
                except (OSError, ValueError):
                    self.handshake_failures += 1
                    return
                self._socks.add(tls)
                sock = tls
                peer = tls.getpeercert()
                if peer:
                    self.client_certs.append(peer.get("subject"))
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                sock.sendall(data)
        except OSError:
            return
        finally:
            self._handlers.discard(me)
            self._socks.discard(raw)
            self._socks.discard(sock)
            sock.close()
            raw.close()


@contextmanager
def openssl_s_server(cert_file: str, key_file: str, ca_file: str, *, version: str = "TLSv1.3") -> Iterator[int]:
    """``openssl s_server`` on 127.0.0.1 (a TLS server this project did not write) requiring a client certificate.

    It presents ``cert_file``/``key_file``, demands a client certificate
    issued by ``ca_file`` (``-Verify 1 -verify_return_error``) and speaks only
    ``version`` (``"TLSv1.2"`` or ``"TLSv1.3"``); yields the port it listens
    on (chosen by the OS) and kills it on exit. Needs the ``openssl`` program.

    Example::

        >>> if shutil.which("openssl"):
        ...     with make_test_certificates() as kit, openssl_s_server(kit.server_cert_file, kit.server_key_file,
        ...                                                             kit.ca_file) as port:
        ...         print(port > 0)
        ... else:
        ...     print(True)
        True
    """
    args = ["openssl", "s_server", "-accept", "127.0.0.1:0", "-tls1_2" if version == "TLSv1.2" else "-tls1_3"]
    args += ["-cert", cert_file, "-key", key_file, "-CAfile", ca_file, "-Verify", "1", "-verify_return_error", "-rev"]
    proc = gsubprocess.Popen(
        args, stdin=gsubprocess.PIPE, stdout=gsubprocess.PIPE, stderr=gsubprocess.DEVNULL, text=True
    )
    try:
        port = None
        with gevent.Timeout(10, AssertionError("openssl s_server did not say where it listens within 10 s")):
            for line in proc.stdout:
                if line.startswith("ACCEPT "):
                    port = int(line.strip().rsplit(":", 1)[1])
                    break
        assert port, "openssl s_server exited before listening"
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
