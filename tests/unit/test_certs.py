"""``data-appraisal certs ca``, ``certs request`` and ``certs sign``: a deployment's CA signs each
party's request, and no private key leaves its owner (``common/web/tls.py``).

In-process through typer's runner; the certificates are checked with ``cryptography`` and with
real TLS handshakes over a socket pair (no server process).
"""

from __future__ import annotations

import base64
import datetime
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from common.cli import app
from common.errors import ConfigError
from common.web.tls import client_context, sign_request, write_ca, write_request


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["certs", *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans(cert: Path) -> list[str]:
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    ext = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)] + [
        str(v) for v in ext.get_values_for_type(x509.IPAddress)
    ]


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> None:
    """One TLS handshake between the two contexts over a socket pair; raises what either raised."""
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                tls.sendall(tls.recv(2))
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b, server_hostname=hostname) as tls:
            tls.sendall(b"hi")
            assert tls.recv(2) == b"hi"
    finally:
        thread.join(timeout=10)
        a.close()
    if errors:
        raise errors[0]


def test_ca_request_sign_makes_a_working_mutual_tls_pair(tmp_path: Path) -> None:
    ca_dir, mo_dir, do_dir, signed = (tmp_path / d for d in ("ca", "mo", "do", "signed"))
    code, err = invoke("ca", "--out", ca_dir)
    assert code == 0, err
    assert mode(ca_dir / "ca.pem") == 0o644 and mode(ca_dir / "ca.key") == 0o600
    for name, where in (("mo.example.org", mo_dir), ("do.example.org", do_dir)):
        code, err = invoke("request", "--name", name, "--alt-name", "10.9.8.7", "--out", where)
        assert code == 0, err
        assert sorted(p.name for p in where.iterdir()) == [f"{name}.csr", f"{name}.key"]
        assert mode(where / f"{name}.key") == 0o600
        csr = x509.load_pem_x509_csr((where / f"{name}.csr").read_bytes())
        assert csr.is_signature_valid and b"PRIVATE" not in (where / f"{name}.csr").read_bytes()
        # the CA holder sees only the request; the party's key stays in its directory
        code, err = invoke(
            "sign", where / f"{name}.csr", "--ca-cert", ca_dir / "ca.pem",
            "--ca-key", ca_dir / "ca.key", "--out", signed, "--name", name,
        )  # fmt: skip
        assert code == 0, err
        assert name in err and "10.9.8.7" in err and "valid until" in err
        assert sans(signed / f"{name}.pem") == [name, "10.9.8.7"]
        assert mode(signed / f"{name}.pem") == 0o644
    assert not list(signed.glob("*.key")), "signing must not produce a key"

    def server(name: str, where: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(signed / f"{name}.pem", where / f"{name}.key")
        ctx.load_verify_locations(ca_dir / "ca.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    mo = client_context(
        ca_dir / "ca.pem", signed / "mo.example.org.pem", mo_dir / "mo.example.org.key"
    )
    handshake(server("do.example.org", do_dir), mo, "do.example.org")  # mutual TLS, by name
    handshake(server("do.example.org", do_dir), mo, "10.9.8.7")  # and by its IP address
    with pytest.raises(ssl.SSLCertVerificationError, match=r"[Hh]ostname mismatch"):
        handshake(server("do.example.org", do_dir), mo, "mo.example.org")


def test_one_more_certificate_later_from_a_kept_ca_key(tmp_path: Path) -> None:
    """The demo path with --ca-key keeps the CA's key, so the CA can sign a new party's request."""
    out, key = tmp_path / "tls", tmp_path / "private" / "ca.key"
    code, err = invoke("--out", out, "--name", "model-owner", "--ca-key", key)
    assert code == 0, err
    write_request(tmp_path / "late", "auditor.example.org")
    code, err = invoke(
        "sign", tmp_path / "late" / "auditor.example.org.csr",
        "--ca-cert", out / "ca.pem", "--ca-key", key, "--out", out,
    )  # fmt: skip
    assert code == 0, err
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    late = x509.load_pem_x509_certificate((out / "auditor.example.org.pem").read_bytes())
    late.verify_directly_issued_by(ca)
    # the demo set is still complete and valid: a later `certs --out` keeps it
    code, err = invoke("--out", out, "--name", "model-owner")
    assert code == 0 and "kept" in err, err


def test_a_request_made_with_openssl_style_rsa_key_is_signed(tmp_path: Path) -> None:
    """A party may make its request with other tools (openssl req): RSA 2048, names in the CN."""
    ca = write_ca(tmp_path / "ca")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dealer.example.org")]))
        .sign(key, hashes.SHA256())
    )
    request = tmp_path / "dealer.csr"
    request.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    signed = sign_request(request, ca_cert=ca.cert, ca_key=ca.key, out=tmp_path / "out", days=30)
    assert signed.names == ("dealer.example.org",)
    assert signed.cert.name == "dealer.example.org.pem"
    now = datetime.datetime.now(datetime.UTC)
    assert signed.not_after - now < datetime.timedelta(days=31)


def weak_request(tmp_path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak.example.org")]))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "weak.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def tampered_request(tmp_path: Path) -> Path:
    """A request whose names were changed after its owner signed it."""
    made = write_request(tmp_path / "honest", "honest.example.org")
    pem = made.request.read_bytes()
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    forged = der.replace(b"honest.example.org", b"forged.example.org")
    path = tmp_path / "forged.csr"
    path.write_bytes(
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(forged)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    return path


def bad_name_request(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.example.org")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "wild.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (weak_request, "RSA key of 1024 bits is too weak"),
        (tampered_request, "signature does not verify"),
        (bad_name_request, "'*.example.org' is not a usable certificate name"),
        (lambda tmp: write_ca(tmp / "other").cert, "not a PEM certificate signing request"),
        (lambda tmp: tmp / "missing.csr", "no such file"),
    ],
    ids=["weak key", "tampered", "wildcard", "not a request", "missing"],
)
def test_sign_refuses_a_bad_request_naming_why(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    ca = write_ca(tmp_path / "ca")
    request = make(tmp_path)
    code, err = invoke(
        "sign", request, "--ca-cert", ca.cert, "--ca-key", ca.key, "--out", tmp_path / "out"
    )
    assert code == 1 and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_sign_refuses_a_wrong_ca_key_an_unexpected_name_and_an_existing_certificate(
    tmp_path: Path,
) -> None:
    ca, other = write_ca(tmp_path / "ca"), write_ca(tmp_path / "other")
    made = write_request(tmp_path / "party", "data.example.org")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="is not the key of --ca-cert"):
        sign_request(made.request, ca_cert=ca.cert, ca_key=other.key, out=out)
    leaf = sign_request(made.request, ca_cert=ca.cert, ca_key=ca.key, out=out).cert
    with pytest.raises(ConfigError, match="is not a CA certificate"):
        sign_request(made.request, ca_cert=leaf, ca_key=made.key, out=tmp_path / "o2")
    with pytest.raises(ConfigError, match=r"asks for 'data\.example\.org', not 'dealer"):
        sign_request(
            made.request, ca_cert=ca.cert, ca_key=ca.key, out=out, expect_name="dealer.example.org"
        )
    first = (out / "data.example.org.pem").read_bytes()
    with pytest.raises(ConfigError, match="exists: pass --overwrite"):
        sign_request(made.request, ca_cert=ca.cert, ca_key=ca.key, out=out)
    assert (out / "data.example.org.pem").read_bytes() == first
    renewed = sign_request(made.request, ca_cert=ca.cert, ca_key=ca.key, out=out, overwrite=True)
    assert renewed.cert.read_bytes() != first


def test_request_and_ca_never_replace_a_key_without_overwrite(tmp_path: Path) -> None:
    made = write_request(tmp_path, "data.example.org")
    key = made.key.read_bytes()
    code, err = invoke("request", "--name", "data.example.org", "--out", tmp_path)
    assert code == 1 and "exists: pass --overwrite" in err, err
    assert made.key.read_bytes() == key
    code, err = invoke("request", "--name", "data.example.org", "--out", tmp_path, "--overwrite")
    assert code == 0 and made.key.read_bytes() != key
    write_ca(tmp_path / "ca")
    code, err = invoke("ca", "--out", tmp_path / "ca")
    assert code == 1 and "stops working" in err, err


def test_certs_without_a_command_or_out_says_what_to_give(tmp_path: Path) -> None:
    code, err = invoke()
    assert code == 1 and "--out DIR" in err and "ca, request, sign" in err, err
    code, err = invoke("--out", tmp_path, "request", "--name", "a", "--out", tmp_path)
    assert code == 1 and "put the options after the command" in err, err
    assert not list(tmp_path.iterdir())
