"""For tests and benchmarks: certificates of a CA of their own for HTTPS servers they run, and the
static HTTPS client (tests/support/apps/https-get.c, OpenSSL) they put into sandboxes. Not used by
the server."""

from __future__ import annotations

import base64
import datetime
import secrets
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastmcp import Client

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "support" / "apps" / "https-get.c"
BINARY = ROOT / ".pytest_cache" / "https-get"
CLIENT_PATH = "/usr/local/bin/https-get"


def _certificate(names: list[str], issuer: tuple[Any, x509.Name] | None, ca: bool) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    signer, issuer_name = issuer if issuer else (key, subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return key, builder.sign(signer, hashes.SHA256())


def _pem(key: Any, cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def server_certificate(folder: Path, names: list[str], signed: bool = True) -> tuple[Path, Path]:
    """A certificate and key for ``names`` (one PEM file for ssl's load_cert_chain) and the CA file that
    trusts it: signed by a CA of its own, or (``signed=False``) self-signed, which no trust store holds."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(3)
    if signed:
        ca_key, ca = _certificate([f"test-ca-{tag}"], None, ca=True)
        key, cert = _certificate(names, (ca_key, ca.subject), ca=False)
    else:
        key, cert = ca_key, ca = _certificate(names, None, ca=False)
    chain, ca_file = folder / f"server-{tag}.pem", folder / f"ca-{tag}.pem"
    chain.write_bytes(_pem(key, cert))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return chain, ca_file


def https_client_binary() -> bytes:
    """The client, built static against OpenSSL (libssl-dev; setup installs it for the tests)."""
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(["gcc", "-static", "-O2", "-s", "-o", str(BINARY), str(SOURCE), "-lssl", "-lcrypto",
                            "-lpthread", "-ldl"], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"could not build {SOURCE.name}: {built.stderr[-2000:]}")
    return BINARY.read_bytes()


async def put_https_client(client: Client, container_id: str, binary: bytes, part: int = 2 * 1024 * 1024) -> None:
    """The client at CLIENT_PATH in the sandbox, written in parts (it is larger than one write_file)."""
    for number, start in enumerate(range(0, len(binary), part)):
        await client.call_tool("write_file", {"container_id": container_id, "path": f"/tmp/https-get.{number}",
                                              "content": base64.b64encode(binary[start:start + part]).decode(),
                                              "encoding": "base64"})
    joined = (await client.call_tool("execute_command", {"container_id": container_id, "command":
              f"mkdir -p /usr/local/bin && cat /tmp/https-get.* > {CLIENT_PATH} && rm /tmp/https-get.* && "
              f"chmod 755 {CLIENT_PATH}"})).structured_content
    if joined["exit_code"] != 0:
        raise RuntimeError(f"could not put the HTTPS client in the sandbox: {joined}")
