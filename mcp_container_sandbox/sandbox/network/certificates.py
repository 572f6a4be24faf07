"""The certificate authority of the egress proxy's own, for the hosts that carry a secret
(secrets.py): the proxy ends the sandbox's TLS there with a certificate for the host signed by
this CA, which sandboxes with secrets trust. Its key is kept by the server (``SANDBOX_STATE_DIR``,
mode 0600) and never enters a sandbox; a sandbox gets the certificate only."""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_YEARS = 10
LEAF_DAYS = 30
CACHED_HOSTS = 256
ALPN = ["http/1.1"]  # the proxy speaks HTTP/1.1 to both ends


class ProxyCA:
    def __init__(self, folder: Path, namespace: str) -> None:
        self.folder, self.namespace = folder, namespace
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())  # one key for every host's certificate
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()

    @property
    def cert_pem(self) -> bytes:
        self._load()
        assert self._cert is not None
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def _load(self) -> None:
        """The CA from the state folder, or a new one made and kept there."""
        if self._cert is not None:
            return
        key_path, cert_path = self.folder / "ca.key", self.folder / "ca.crt"
        if key_path.exists() and cert_path.exists():
            self._key = serialization.load_pem_private_key(key_path.read_bytes(), None)  # type: ignore[assignment]
            self._cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mcp-container-sandbox proxy CA ({self.namespace})")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key, self._cert = key, cert

    def context_for(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for ``host`` signed by the CA (cached)."""
        context = self._contexts.get(host)
        if context is not None:
            self._contexts.move_to_end(host)
            return context
        self._load()
        assert self._key is not None and self._cert is not None
        now = datetime.datetime.now(datetime.UTC)
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
                .issuer_name(self._cert.subject).public_key(self._leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.set_alpn_protocols(ALPN)
        chain = leaf.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        key = self._leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
        # load_cert_chain reads files only: a private file of the server's, removed at once.
        with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".leaf-", suffix=".pem") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(chain + key)
            handle.flush()
            context.load_cert_chain(handle.name)
        self._contexts[host] = context
        if len(self._contexts) > CACHED_HOSTS:
            self._contexts.popitem(last=False)
        return context


def upstream_context() -> ssl.SSLContext:
    """How the proxy checks the real host: against this host's trust store (SSL_CERT_FILE and
    SSL_CERT_DIR of the server's environment name another), the host name included."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(ALPN)
    return context


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
