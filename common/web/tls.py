"""TLS for the REST calls between the services: a private demo CA, server and client contexts.

The services authenticate each other twice: mutual TLS proves that each end holds a key the
deployment's CA certified (every party configures that CA, ``*_TLS_CA``), and the bearer token
inside the connection says which identity the caller has and what it may do. Without a certificate
from that CA a client does not get past the handshake, so a stolen token alone is not enough;
without the token a certificate grants nothing.

:func:`write_demo_pki` issues a private CA and one certificate per name (each valid for the name as
a DNS name, ``localhost``, 127.0.0.1 and ::1, for both server and client use): the self-signed path
of the local demo, of ``docker compose`` and of ``data-appraisal certs``. :func:`uvicorn_ssl_kwargs`
checks a service's TLS settings and files and returns uvicorn's arguments; :func:`peer_client` is
the httpx client a service calls its peers with (it verifies them against the CA and presents the
service's own certificate); :func:`client_context` is the same for the command line.

Private keys are files (0600), never command-line arguments or log lines; only paths are.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.errors import ConfigError, PlainHTTPRefused

if TYPE_CHECKING:
    from common.web.settings import ServiceSettings

log = logging.getLogger("data_appraisal.tls")

CA_FILE = "ca.pem"
# the three services, and the operator's client (the `appraise` command, curl, the demo's client)
DEFAULT_NAMES = ("model-owner", "data-owner", "dealer", "operator")
DEFAULT_DAYS = 365
LOOPBACK_NAMES = ("localhost",)  # besides 127.0.0.0/8 and ::1
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
_ORG = "data-appraisal demo"


def cert_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}.pem"


def key_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}.key"


@dataclass(frozen=True)
class Pki:
    """A demo CA's certificate and the certificate and key of each name, all in one directory."""

    directory: Path
    names: tuple[str, ...]
    written: bool  # False: a complete, valid set was already there and was kept

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    def cert(self, name: str) -> Path:
        return cert_path(self.directory, name)

    def key(self, name: str) -> Path:
        return key_path(self.directory, name)

    def client(self, name: str = "operator") -> ClientTLS:
        return ClientTLS(ca=self.ca, cert=self.cert(name), key=self.key(name))


@dataclass(frozen=True)
class ClientTLS:
    """What a client verifies servers against and, for mutual TLS, the certificate it presents."""

    ca: Path | None = None  # None: the system's trust store
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        return client_context(self.ca, self.cert, self.key)


# --------------------------------------------------------------------------------------------
# The demo CA
# --------------------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the first byte on (no window of wider access)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed a certificate's 0644
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _issue_ca(
    days: int, common_name: str = "data-appraisal demo CA", org: str = _ORG
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(ca=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a service's key only signs (ECDSA, in TLS handshakes)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _alt_names(name: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(name)))
    except ValueError:
        names.append(x509.DNSName(name))
    for extra in LOOPBACK_NAMES:
        if extra != name:
            names.append(x509.DNSName(extra))
    for ip in ("127.0.0.1", "::1"):
        if ip != name:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    return names


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def _leaf(
    subject: str,
    public_key: Any,
    alt_names: list[x509.GeneralName],
    ca_key: Any,
    ca: x509.Certificate,
    days: int,
    org: str = _ORG,
) -> x509.Certificate:
    """A certificate for ``public_key``, valid as server and client for ``alt_names``, that the CA
    signs; it never outlives the CA."""
    now = _now()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                    x509.NameAttribute(NameOID.COMMON_NAME, subject),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _issue(
    name: str, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The demo path: a fresh key and its certificate, valid for ``name`` and loopback."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _leaf(name, key.public_key(), _alt_names(name), ca_key, ca, days)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    if not names:
        raise ConfigError("name at least one certificate (e.g. model-owner)")
    out: list[str] = []
    for name in names:
        if name in out:
            raise ConfigError(f"the name {name!r} is given twice")
        if name == "ca" or not (_NAME.fullmatch(name) or _is_ip(name)):
            raise ConfigError(
                f"{name!r} is not a usable certificate name: lowercase letters, digits, '-' and "
                "'.', the DNS name (or IP address) its holder is reached at; not 'ca'"
            )
        out.append(name)
    return tuple(out)


def _existing_problem(directory: Path, names: Sequence[str]) -> str | None:
    """Why the set in ``directory`` cannot be kept as it is (None: it can)."""
    try:
        ca = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        return f"{directory / CA_FILE} is missing or unreadable ({type(exc).__name__})"
    soon = _now() + datetime.timedelta(days=1)
    if ca.not_valid_after_utc < soon:
        return (
            f"the CA certificate {directory / CA_FILE} expires on {ca.not_valid_after_utc:%Y-%m-%d}"
        )
    for name in names:
        cert_file, key_file = cert_path(directory, name), key_path(directory, name)
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            return f"the certificate or key of {name!r} is missing or unreadable ({type(exc).__name__})"
        if cert.public_key() != key.public_key():
            return f"{key_file} is not the key of {cert_file}"
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            return f"{cert_file} was not issued by {directory / CA_FILE}"
        if cert.not_valid_after_utc < soon:
            return f"{cert_file} expires on {cert.not_valid_after_utc:%Y-%m-%d}"
        if os.stat(key_file).st_mode & 0o077:
            return f"{key_file} is readable by other users"
    return None


def write_demo_pki(
    directory: Path,
    names: Sequence[str] = DEFAULT_NAMES,
    *,
    days: int = DEFAULT_DAYS,
    overwrite: bool = False,
    ca_key: Path | None = None,
) -> Pki:
    """Issue a private CA and a certificate and key for each name into ``directory``.

    Writes ``ca.pem`` and ``<name>.pem`` (0644) and ``<name>.key`` (0600). A complete, valid set
    for these names already in ``directory`` is kept as it is (so that a restarted deployment keeps
    its certificates); an incomplete or invalid one is replaced only with ``overwrite``. The CA's own
    private key is discarded unless ``ca_key`` names a file for it (0600; keep it away from the
    directory the services read).
    """
    directory = Path(directory)
    names = _check_names(names)
    if days < 1:
        raise ConfigError(f"a certificate must be valid for at least a day, not {days}")
    if not overwrite:
        problem = _existing_problem(directory, names)
        if problem is None:
            return Pki(directory, names, written=False)
        present = [directory / CA_FILE, *(cert_path(directory, n) for n in names)]
        present += [key_path(directory, n) for n in names]
        if any(p.exists() for p in present):
            raise ConfigError(
                f"{directory} holds certificates that cannot be kept: {problem}; pass --overwrite "
                "to issue a fresh set (every service must then be restarted)"
            )
        if ca_key is not None and Path(ca_key).exists():
            raise ConfigError(f"{ca_key} exists: pass --overwrite to replace the CA's key")
    if ca_key is not None and Path(ca_key).resolve().parent == directory.resolve():
        raise ConfigError(
            f"keep the CA's key ({ca_key}) out of {directory}: every service reads that directory"
        )
    directory.mkdir(parents=True, exist_ok=True)
    ca_private, ca = _issue_ca(days)
    if ca_key is not None:
        Path(ca_key).parent.mkdir(parents=True, exist_ok=True)
        _write(Path(ca_key), _key_pem(ca_private), 0o600)
    issued = {name: _issue(name, ca_private, ca, days) for name in names}
    # the CA last: a run interrupted half-way leaves a set that does not verify (so the next run
    # refuses it without --overwrite) rather than one that looks complete
    for name, (key, cert) in issued.items():
        _write(key_path(directory, name), _key_pem(key), 0o600)
        _write(cert_path(directory, name), _cert_pem(cert), 0o644)
    _write(directory / CA_FILE, _cert_pem(ca), 0o644)
    return Pki(directory, names, written=True)


# --------------------------------------------------------------------------------------------
# A deployment's CA: request and sign (no private key leaves its owner)
# --------------------------------------------------------------------------------------------

REQUEST_SUFFIX = ".csr"
CA_KEY_FILE = "ca.key"
DEFAULT_CA_DAYS = 3650
_DEPLOYMENT_ORG = "data-appraisal"


def request_path(directory: Path, name: str) -> Path:
    return Path(directory) / f"{name}{REQUEST_SUFFIX}"


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA whose key is kept, so that it can sign one more request later (``certs sign``)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class KeyRequest:
    """A party's new private key (0600, it never leaves its owner) and its signing request."""

    key: Path
    request: Path
    names: tuple[str, ...]


@dataclass(frozen=True)
class Signed:
    """A certificate the CA issued for a request."""

    cert: Path
    names: tuple[str, ...]
    not_after: datetime.datetime


def _refuse_existing(paths: Sequence[Path], what: str) -> None:
    present = [str(p) for p in paths if p.exists()]
    if present:
        raise ConfigError(f"{', '.join(present)} exists: pass --overwrite to replace {what}")


def write_ca(
    directory: Path,
    *,
    common_name: str = "data-appraisal CA",
    days: int = DEFAULT_CA_DAYS,
    overwrite: bool = False,
) -> CertificateAuthority:
    """A deployment's CA: ``ca.pem`` (0644, every party configures it as ``*_TLS_CA``) and its key
    ``ca.key`` (0600, stays with the CA holder), both in ``directory``, which no service reads."""
    if days < 1:
        raise ConfigError(f"a CA must be valid for at least a day, not {days}")
    if not common_name.strip():
        raise ConfigError("the CA's common name is empty")
    directory = Path(directory)
    ca = CertificateAuthority(directory / CA_FILE, directory / CA_KEY_FILE)
    if not overwrite:
        _refuse_existing([ca.cert, ca.key], "the CA (every certificate it issued stops working)")
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = _issue_ca(days, common_name, _DEPLOYMENT_ORG)
    _write(ca.key, _key_pem(key), 0o600)
    _write(ca.cert, _cert_pem(cert), 0o644)
    return ca


def write_request(
    directory: Path,
    name: str,
    alt_names: Sequence[str] = (),
    *,
    overwrite: bool = False,
) -> KeyRequest:
    """A fresh private key ``<name>.key`` (0600) and a request ``<name>.csr`` for a certificate
    valid for ``name`` and each of ``alt_names`` (DNS names or IP addresses), in ``directory``.

    Only the request goes to the CA holder; the key stays here."""
    names = _check_names([name, *alt_names])
    directory = Path(directory)
    made = KeyRequest(key_path(directory, name), request_path(directory, name), names)
    if not overwrite:
        _refuse_existing([made.key, made.request], f"the key of {name!r} (make a new request)")
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(made.key, _key_pem(key), 0o600)
    _write(made.request, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    return made


def _request_names(csr: x509.CertificateSigningRequest, source: Path) -> tuple[str, ...]:
    """The names a request asks for: its subject alternative names, else its common name."""
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in sans.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in sans.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names:
        raise ConfigError(f"{source} names no host: no subject alternative name, no common name")
    try:
        return _check_names(names)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _check_public_key(public_key: Any, source: Path) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.key_size < 256:
            raise ConfigError(f"{source}: an EC key on {public_key.curve.name} is too weak")
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise ConfigError(f"{source}: an RSA key of {public_key.key_size} bits is too weak")
        return
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return
    raise ConfigError(
        f"{source}: a {type(public_key).__name__} key; use EC P-256 (`data-appraisal certs request` "
        "makes one), RSA of 2048 bits or more, or Ed25519"
    )


def load_ca(ca_cert: Path, ca_key: Path) -> tuple[x509.Certificate, Any]:
    """The CA's certificate and key, checked to belong together and to be able to sign."""
    try:
        cert = x509.load_pem_x509_certificate(_readable(ca_cert, "--ca-cert").read_bytes())
    except ValueError:
        raise ConfigError(f"--ca-cert {ca_cert}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(
            _readable(ca_key, "--ca-key").read_bytes(), password=None
        )
    except (ValueError, TypeError):
        raise ConfigError(
            f"--ca-key {ca_key}: not an unencrypted PEM private key (the CA's ca.key)"
        ) from None
    if cert.public_key() != key.public_key():
        raise ConfigError(f"--ca-key {ca_key} is not the key of --ca-cert {ca_cert}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"--ca-cert {ca_cert} is not a CA certificate")
    if cert.not_valid_after_utc < _now() + datetime.timedelta(days=1):
        raise ConfigError(
            f"--ca-cert {ca_cert} expires on {cert.not_valid_after_utc:%Y-%m-%d}: make a new CA "
            "(`data-appraisal certs ca`) and have every party configure it"
        )
    return cert, key


def sign_request(
    request: Path,
    *,
    ca_cert: Path,
    ca_key: Path,
    out: Path,
    days: int = DEFAULT_DAYS,
    expect_name: str | None = None,
    overwrite: bool = False,
) -> Signed:
    """The CA holder's side: check a party's request and issue ``<name>.pem`` into ``out``.

    The certificate carries the names the request asks for (its holder proves it holds the key by
    the request's signature), is valid as server and as client, and never outlives the CA. With
    ``expect_name`` a request for another primary name is refused."""
    request = Path(request)
    if days < 1:
        raise ConfigError(f"a certificate must be valid for at least a day, not {days}")
    try:
        csr = x509.load_pem_x509_csr(_readable(request, "the request").read_bytes())
    except ValueError:
        raise ConfigError(
            f"{request}: not a PEM certificate signing request (`data-appraisal certs request` "
            "writes one, <name>.csr)"
        ) from None
    if not csr.is_signature_valid:
        raise ConfigError(f"{request}: its signature does not verify (altered, or not its key's)")
    names = _request_names(csr, request)
    if expect_name is not None and names[0] != expect_name:
        raise ConfigError(f"{request} asks for {names[0]!r}, not {expect_name!r}")
    _check_public_key(csr.public_key(), request)
    ca, key = load_ca(ca_cert, ca_key)
    target = cert_path(Path(out), names[0])
    if not overwrite:
        _refuse_existing([target], f"the certificate of {names[0]!r}")
    cert = _leaf(names[0], csr.public_key(), _general_names(names), key, ca, days, _DEPLOYMENT_ORG)
    Path(out).mkdir(parents=True, exist_ok=True)
    _write(target, _cert_pem(cert), 0o644)
    return Signed(target, names, cert.not_valid_after_utc)


# --------------------------------------------------------------------------------------------
# Contexts
# --------------------------------------------------------------------------------------------


def _readable(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: no such file {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what}: {path} is not readable by this user")
    return path


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path, cert_what: str, key_what: str) -> None:
    _readable(cert, cert_what)
    _readable(key, key_what)
    if os.stat(key).st_mode & 0o077:
        log.warning("%s: %s is readable by other users; chmod 600 it", key_what, key)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{key_what}={key} is not the key of {cert_what}={cert}") from None
        raise ConfigError(
            f"{cert_what}={cert} and {key_what}={key}: not a PEM certificate and its unencrypted "
            f"private key ({exc.reason or exc})"
        ) from None


def _load_ca(ctx: ssl.SSLContext, ca: Path, what: str) -> None:
    _readable(ca, what)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise ConfigError(f"{what}={ca}: not a PEM CA certificate ({exc.reason or exc})") from None


def client_context(
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    names: tuple[str, str, str] = ("the CA", "the client certificate", "its key"),
) -> ssl.SSLContext:
    """An SSLContext that verifies servers against ``ca`` (else the system's trust store) and
    hostnames, and presents ``cert``/``key`` if the server asks for a client certificate."""
    if (cert is None) != (key is None):
        raise ConfigError(f"give both {names[1]} and {names[2]}, or neither")
    if ca is None:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:  # the CA file replaces the system's trust store
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and hostnames
        _load_ca(ctx, ca, names[0])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key, names[1], names[2])
    # what it was built from, for explain_transport_error once a request fails
    paths = [None if p is None else Path(p) for p in (ca, cert, key)]
    setattr(ctx, _FILES, ContextFiles(paths[0], paths[1], paths[2], names))
    return ctx


def _env(settings: ServiceSettings, field: str) -> str:
    return settings.env_name(field)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host.lower().rstrip(".") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_enabled(settings: ServiceSettings) -> bool:
    return settings.tls_cert is not None or settings.tls_key is not None


def check_transport(settings: ServiceSettings) -> None:
    """The plain-HTTP policy and the consistency of the TLS settings (no file is read).

    TLS needs both ``*_TLS_CERT`` and ``*_TLS_KEY``; mutual TLS (the default) also ``*_TLS_CA``.
    Without TLS a service serves plain HTTP only on a loopback address, unless
    ``*_INSECURE_HTTP=true`` says the operator accepts tokens crossing the network in clear.
    """
    cert, key, ca = _env(settings, "tls_cert"), _env(settings, "tls_key"), _env(settings, "tls_ca")
    if tls_enabled(settings):
        if settings.tls_cert is None or settings.tls_key is None:
            missing = cert if settings.tls_cert is None else key
            raise ConfigError(f"{missing} is unset: TLS needs both {cert} and {key}")
        if settings.tls_client_auth == "required" and settings.tls_ca is None:
            raise ConfigError(
                f"{_env(settings, 'tls_client_auth')}=required (mutual TLS, the default) needs "
                f"{ca}: the CA certificate that issued the peers' client certificates; or set "
                f"{_env(settings, 'tls_client_auth')}=none to rely on bearer tokens over TLS alone"
            )
        return
    if settings.insecure_http:
        log.warning(
            "%s=true: serving PLAIN HTTP on %s:%s - bearer tokens and data set metadata cross the "
            "network unencrypted and unauthenticated. Set %s and %s to serve HTTPS.",
            _env(settings, "insecure_http"),
            settings.host,
            settings.port,
            cert,
            key,
        )
        return
    if not is_loopback(settings.host):
        raise ConfigError(
            f"{_env(settings, 'host')}={settings.host} would serve plain HTTP to the network: set "
            f"{cert} and {key} (and {ca}; `data-appraisal certs` writes a demo set), or "
            f"{_env(settings, 'insecure_http')}=true to accept that tokens cross the network in "
            "clear"
        )


def server_context(settings: ServiceSettings) -> ssl.SSLContext:
    """The service's server-side context, built to check its files (uvicorn builds its own)."""
    assert settings.tls_cert is not None and settings.tls_key is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(
        ctx,
        settings.tls_cert,
        settings.tls_key,
        _env(settings, "tls_cert"),
        _env(settings, "tls_key"),
    )
    if settings.tls_ca is not None:
        _load_ca(ctx, settings.tls_ca, _env(settings, "tls_ca"))
    if settings.tls_client_auth == "required":
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def uvicorn_ssl_kwargs(settings: ServiceSettings) -> dict[str, Any]:
    """uvicorn's TLS arguments for the service, after checking the policy and every file.

    Empty for plain HTTP (loopback, or ``*_INSECURE_HTTP=true``). Raises ConfigError naming the
    setting and the file when one is missing, unreadable or does not match.
    """
    check_transport(settings)
    if not tls_enabled(settings):
        return {}
    server_context(settings)  # the files load, and the key is the certificate's
    kwargs: dict[str, Any] = {
        "ssl_certfile": str(settings.tls_cert),
        "ssl_keyfile": str(settings.tls_key),
        # TLS 1.2 or later: PROTOCOL_TLS_SERVER's minimum under the OpenSSL 3 default policy
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        "ssl_cert_reqs": ssl.CERT_REQUIRED
        if settings.tls_client_auth == "required"
        else ssl.CERT_NONE,
    }
    if settings.tls_ca is not None:
        kwargs["ssl_ca_certs"] = str(settings.tls_ca)
    return kwargs


def client_verify(settings: ServiceSettings) -> ssl.SSLContext:
    """What the service's outbound client verifies peers with: ``*_TLS_CA`` (else the system's
    trust store) and hostnames; it presents ``*_TLS_CERT`` when a peer asks for a certificate."""
    return client_context(
        settings.tls_ca,
        settings.tls_cert,
        settings.tls_key,
        names=(_env(settings, "tls_ca"), _env(settings, "tls_cert"), _env(settings, "tls_key")),
    )


def refuse_plain_http(url: httpx.URL | str, *, allowed: bool, setting: str) -> None:
    """Raise unless ``url`` is https, or http to this machine, or plain HTTP is ``allowed``."""
    url = httpx.URL(url)
    if url.scheme == "http" and not allowed and not is_loopback(url.host):
        raise PlainHTTPRefused(
            f"refusing to send a bearer token over plain HTTP to {url.host}: use an https:// URL "
            f"(or {setting}=true to allow plain HTTP)"
        )


def peer_client(settings: ServiceSettings) -> httpx.AsyncClient:
    """The httpx client a service calls its peers with.

    It verifies each peer's certificate and hostname against ``*_TLS_CA``, presents this service's
    own certificate for mutual TLS, and refuses http:// URLs of other machines unless
    ``*_INSECURE_HTTP=true``. Redirects are not followed (httpx's default).
    """
    verify = client_verify(settings)
    setting = _env(settings, "insecure_http")

    async def guard(request: httpx.Request) -> None:
        refuse_plain_http(request.url, allowed=settings.insecure_http, setting=setting)

    return PeerClient(
        tls_context=verify, timeout=settings.negotiation_timeout, event_hooks={"request": [guard]}
    )


class PeerClient(httpx.AsyncClient):
    """A service's client of its peers, which keeps its TLS context to explain a failure."""

    def __init__(self, *, tls_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(verify=tls_context, **kwargs)
        self.tls_context = tls_context


async def explain_peer_error(http: httpx.AsyncClient, exc: Exception, url: str) -> str:
    """:func:`explain_transport_error` for a service's call to a peer (off the event loop)."""
    context = http.tls_context if isinstance(http, PeerClient) else None
    timeout = http.timeout.connect or 5.0
    return await asyncio.to_thread(explain_transport_error, exc, url, context, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Why a TLS connection failed, in words
# --------------------------------------------------------------------------------------------

_FILES = "data_appraisal_files"  # the attribute of a context of client_context: what it loaded
# OpenSSL's X509_V_ERR_* codes of a server certificate that another CA issued
_OTHER_CA = {2, 18, 19, 20, 21}
_EXPIRED, _NOT_YET_VALID, _NAME_MISMATCH, _IP_MISMATCH = 10, 9, 62, 64


@dataclass(frozen=True)
class ContextFiles:
    """The files a client context was built from and the settings that name them."""

    ca: Path | None
    cert: Path | None
    key: Path | None
    names: tuple[str, str, str]


def context_files(context: ssl.SSLContext | None) -> ContextFiles | None:
    return getattr(context, _FILES, None)


def _peer_names(host: str, port: int, timeout: float) -> list[str]:
    """The names the server's certificate carries (read without verifying it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der or b"")
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return []
    return [str(v) for v in sans.get_values_for_type(x509.DNSName)] + [
        str(v) for v in sans.get_values_for_type(x509.IPAddress)
    ]


def _server_cert_problem(
    exc: ssl.SSLCertVerificationError, host: str, port: int, files: ContextFiles | None, t: float
) -> str:
    code = exc.verify_code
    if code in (_NAME_MISMATCH, _IP_MISMATCH):
        names = _peer_names(host, port, t)
        valid = f"it is valid for {', '.join(names)}" if names else "it names other hosts"
        return (
            f"name mismatch: the certificate of {host}:{port} does not name {host} ({valid}); "
            f"call it by a name its certificate carries, or have the CA issue it one for {host}"
        )
    if code in _OTHER_CA:
        trusted = "the system's trust store"
        if files is not None and files.ca is not None:
            trusted = f"{files.names[0]}={files.ca}"
        return (
            f"wrong CA: the certificate of {host}:{port} was not issued by the CA this side trusts "
            f"({trusted}); configure the deployment's ca.pem on both sides"
        )
    if code == _EXPIRED:
        return f"the certificate of {host}:{port} has expired: have the CA issue it a new one"
    if code == _NOT_YET_VALID:
        return f"the certificate of {host}:{port} is not valid yet: check both machines' clocks"
    return f"the certificate of {host}:{port} failed verification: {exc.verify_message}"


def _own_cert_problem(host: str, port: int, files: ContextFiles | None) -> str:
    """The server closed the connection right after the handshake: it refused this client."""
    if files is None:
        return (
            f"{host}:{port} closed the connection after the TLS handshake: it requires a client "
            "certificate (mutual TLS) and refused this client's, or this client presented none"
        )
    cert_name, key_name = files.names[1], files.names[2]
    if files.cert is None:
        return (
            f"no client certificate: {host}:{port} requires one (mutual TLS) and this side "
            f"presented none; set {cert_name} and {key_name} to a certificate and key from the "
            "deployment's CA"
        )
    where = f"{cert_name}={files.cert}"
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError):
        return f"{host}:{port} refused this side's client certificate {where}"
    if cert.not_valid_after_utc < _now():
        return f"{host}:{port} refused this side's client certificate {where}: it has expired"
    issuer = ", ".join(
        str(a.value) for a in cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    if files.ca is not None:
        try:
            ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
            cert.verify_directly_issued_by(ca)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return (
                f"wrong CA: {host}:{port} refused this side's client certificate {where}: it was "
                f"issued by {issuer!r}, not by {files.names[0]}={files.ca}, the deployment's CA"
            )
    return (
        f"wrong CA: {host}:{port} refused this side's client certificate {where} (issued by "
        f"{issuer!r}): the CA that server trusts (its *_TLS_CA) is another one"
    )


def tls_problem(
    url: httpx.URL | str, context: ssl.SSLContext | None, *, timeout: float = 5.0
) -> str | None:
    """Why a TLS connection to ``url`` fails, in words; None if no TLS cause shows.

    It connects once more: a failed verification of the server's certificate names its cause (the
    wrong CA, a name the certificate does not carry, expiry); a server that closes the connection
    right after the handshake refused this client's certificate (TLS 1.3 sends no alert there), and
    the files ``context`` was built from (:func:`client_context`) say whether there was one and
    whom it is from. Only called once a request has failed."""
    url = httpx.URL(url)
    if url.scheme != "https" or context is None:
        return None
    host, port = url.host, url.port or 443
    files = context_files(context)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with sock:
        try:
            tls = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return _server_cert_problem(exc, host, port, files, timeout)
        except ssl.SSLError as exc:
            if exc.reason == "WRONG_VERSION_NUMBER":
                return f"{host}:{port} does not speak TLS (a plain-HTTP service?)"
            return None
        except OSError:
            return None
        with tls:
            try:
                request = f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                tls.sendall(request.encode())
                answered = tls.recv(1)
            except ssl.SSLError as exc:
                if "CERTIFICATE" in str(exc.reason or "") or "UNKNOWN_CA" in str(exc.reason or ""):
                    return _own_cert_problem(host, port, files)
                return None
            except (ConnectionResetError, BrokenPipeError):
                answered = b""
            except OSError:
                return None
    return None if answered else _own_cert_problem(host, port, files)


def explain_transport_error(
    exc: Exception, url: httpx.URL | str, context: ssl.SSLContext | None, *, timeout: float = 5.0
) -> str:
    """A failed request's transport error, led by its TLS cause when there is one."""
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return text
    if isinstance(exc, httpx.ConnectError) and "[SSL" not in str(exc):
        return text  # refused, unreachable, unknown host: not TLS
    cause = tls_problem(url, context, timeout=timeout)
    return text if cause is None else f"{cause} ({text})"
