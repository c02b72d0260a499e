"""Authenticated, encrypted channels between the MPC workers of one session.

CrypTen's own transport (torch.distributed over gloo) sends every share, and the seeds of its
generators, in the clear, and its rendezvous (TCPStore) accepts any client on every interface. This
module replaces it. The model owner's worker listens on the session's one rendezvous address; the
data owner's worker and the dealer connect to it. Each link is set up by a handshake:

1. hellos: the client sends ``MAGIC | role | X25519 public key | nonce``, the server answers
   ``MAGIC | X25519 public key | nonce`` (fresh keys for every connection);
2. key schedule: ``HKDF-SHA256(ikm = X25519 shared secret, salt = the link's pre-shared key,
   info = SHA-256 of the transcript)``. The transcript holds the protocol version, the session id,
   the link's name and both hellos. Two confirmation tags follow, from keys derived the same way:
   ``auth`` (proves the pre-shared key) and ``params`` (its info also binds the SHA-256 of the agreed
   job, so parties that were given different parameters cannot proceed);
3. the client sends both tags, the server checks them in constant time and answers with a status
   byte and its own tag; the client checks that tag in turn. Only then does either side send
   anything that depends on a secret.

The pre-shared keys are drawn by the model owner's service and reach the peers over the
authenticated REST channel (:class:`common.protocol.SessionKeys`); the traffic keys come from the
ephemeral X25519 exchange, so a party that knows another link's pre-shared key, but does not tamper
with traffic, still cannot read that link. Records are AES-256-GCM with a per-direction counter as
nonce (replayed, reordered or altered records fail to decrypt) and the record length as associated
data; only lengths and timing are visible on the wire.

The data owner's worker and the dealer need a key of their own (the dealer's generator for the data
owner's triple shares), which the model owner must not know. They run the same handshake *through*
the model owner's worker, which relays four opaque messages (:func:`relay_handshake`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from common.errors import ChannelClosed, MPCError, PeerAuthError, PeerTimeout
from common.protocol import link_name

log = logging.getLogger("data_appraisal.transport")

VERSION = b"data-appraisal/transport/1"
MAGIC = b"DAPT1"
ROLE_CODES = {"data_owner": 1, "dealer": 2}
CODE_ROLES = {v: k for k, v in ROLE_CODES.items()}
_HELLO = struct.Struct(f"!{len(MAGIC)}sB32s32s")  # magic, role, public key, nonce
_SERVER_HELLO = struct.Struct(f"!{len(MAGIC)}s32s32s")
_TAGS = struct.Struct("!32s32s")
_VERDICT = struct.Struct("!B32s")
OK, BAD_KEY, BAD_PARAMS, UNEXPECTED = 0, 1, 2, 3
_VERDICT_TEXT = {
    BAD_KEY: "it does not hold this session's key (an impostor, or a stale or wrong session)",
    BAD_PARAMS: "it was given different session parameters (a tampered or mismatched job)",
    UNEXPECTED: "it was not expected (a second connection for a role that already joined)",
}
ABORT = b"DAPT-ABORT:"  # an authenticated in-band notice that the rendezvous failed
RECORD_BYTES = 4 << 20  # plaintext bytes per AES-GCM record
INLINE_BYTES = 1 << 20  # messages up to this size may be sent on the caller's thread
_LEN = struct.Struct("!I")
_MSG = struct.Struct("!Q")  # a message's total length, at the start of its first record


@dataclass(frozen=True)
class LinkSpec:
    """What both ends of a link must agree on before they trust each other."""

    session_id: str
    link: str  # "mo-do", "mo-dealer" or "do-dealer"
    psk: bytes
    job_digest: bytes


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class _Schedule:
    """The keys of one handshake, derived from the transcript (see the module docstring)."""

    def __init__(self, spec: LinkSpec, shared: bytes, client_hello: bytes, server_hello: bytes):
        transcript = b"|".join(
            [VERSION, spec.session_id.encode(), spec.link.encode(), client_hello, server_hello]
        )
        base = hashlib.sha256(transcript).digest()
        with_job = hashlib.sha256(base + spec.job_digest).digest()
        self.base = base
        self.master = _hkdf(shared, spec.psk, b"master" + with_job)
        self.auth_key = _hkdf(shared, spec.psk, b"auth" + base)
        self.params_key = _hkdf(shared, spec.psk, b"params" + with_job)

    def tag(self, key: bytes, who: bytes) -> bytes:
        return hmac.new(key, who + self.base, hashlib.sha256).digest()

    def derive(self, label: str) -> bytes:
        info = label.encode()
        return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(self.master)


class Framing:
    """Length-prefixed plaintext messages on a socket (handshake only)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(_LEN.pack(len(data)) + data)

    def recv(self, limit: int = 4096) -> bytes:
        (n,) = _LEN.unpack(_recv_exact(self.sock, _LEN.size))
        if n > limit:
            raise ChannelClosed(f"the peer announced a {n}-byte handshake message (limit {limit})")
        return _recv_exact(self.sock, n)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from the socket."""
    n, got = len(view), 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except TimeoutError:
            raise
        except OSError as exc:
            raise ChannelClosed(f"the connection broke: {exc}") from exc
        if k == 0:
            raise ChannelClosed("the peer closed the connection")
        got += k


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_into(sock, memoryview(buf))
    return bytes(buf)


Send = Callable[[bytes], None]
Recv = Callable[[], bytes]


def client_handshake(spec: LinkSpec, role: str, send: Send, recv: Recv) -> _Schedule:
    """Run the client's side; returns the key schedule or raises :class:`PeerAuthError`."""
    key = X25519PrivateKey.generate()
    hello = _HELLO.pack(MAGIC, ROLE_CODES[role], _raw(key.public_key()), os.urandom(32))
    send(hello)
    reply = recv()
    if len(reply) != _SERVER_HELLO.size or reply[: len(MAGIC)] != MAGIC:
        raise PeerAuthError(f"the {spec.link} peer does not speak this protocol (bad hello)")
    _, server_pub, _ = _SERVER_HELLO.unpack(reply)
    shared = key.exchange(X25519PublicKey.from_public_bytes(server_pub))
    schedule = _Schedule(spec, shared, hello, reply)
    send(
        _TAGS.pack(
            schedule.tag(schedule.auth_key, b"client"), schedule.tag(schedule.params_key, b"client")
        )
    )
    verdict = recv()
    if len(verdict) != _VERDICT.size:
        raise PeerAuthError(f"the {spec.link} peer sent a malformed handshake answer")
    status, server_tag = _VERDICT.unpack(verdict)
    if status != OK:
        raise PeerAuthError(
            f"the {spec.link} peer refused this party: {_VERDICT_TEXT.get(status, 'unknown reason')}"
        )
    if not hmac.compare_digest(server_tag, schedule.tag(schedule.params_key, b"server")):
        raise PeerAuthError(
            f"the {spec.link} peer failed authentication: it does not hold this session's key "
            "(an impostor at the rendezvous address, or a stale session)"
        )
    return schedule


def server_hello(recv: Recv) -> tuple[bytes, str]:
    """Read a client hello; returns it and the role it claims."""
    hello = recv()
    if len(hello) != _HELLO.size or hello[: len(MAGIC)] != MAGIC:
        raise PeerAuthError("a client that does not speak this protocol connected (bad hello)")
    _, code, _, _ = _HELLO.unpack(hello)
    if code not in CODE_ROLES:
        raise PeerAuthError(f"a client claimed an unknown role code {code}")
    return hello, CODE_ROLES[code]


def server_handshake(spec: LinkSpec, hello: bytes, send: Send, recv: Recv) -> _Schedule:
    """Answer a client hello (see :func:`server_hello`); raises :class:`PeerAuthError`."""
    key = X25519PrivateKey.generate()
    _, _, client_pub, _ = _HELLO.unpack(hello)
    reply = _SERVER_HELLO.pack(MAGIC, _raw(key.public_key()), os.urandom(32))
    send(reply)
    shared = key.exchange(X25519PublicKey.from_public_bytes(client_pub))
    schedule = _Schedule(spec, shared, hello, reply)
    tags = recv()
    if len(tags) != _TAGS.size:
        raise PeerAuthError(f"the {spec.link} client sent malformed confirmation tags")
    auth_tag, params_tag = _TAGS.unpack(tags)
    if not hmac.compare_digest(auth_tag, schedule.tag(schedule.auth_key, b"client")):
        send(_VERDICT.pack(BAD_KEY, bytes(32)))
        raise PeerAuthError(
            f"a client claiming the {spec.link} link failed authentication: "
            f"{_VERDICT_TEXT[BAD_KEY]}"
        )
    if not hmac.compare_digest(params_tag, schedule.tag(schedule.params_key, b"client")):
        send(_VERDICT.pack(BAD_PARAMS, bytes(32)))
        raise PeerAuthError(f"the {spec.link} client {_VERDICT_TEXT[BAD_PARAMS]}")
    send(_VERDICT.pack(OK, schedule.tag(schedule.params_key, b"server")))
    return schedule


class Channel:
    """An authenticated, encrypted, full-duplex message channel over one TCP connection.

    ``send`` queues a message for a writer thread (so both ends may send large messages at the same
    time without deadlock) and returns a future; ``recv`` reads the next message on the calling
    thread. Messages arrive in order, exactly once, unaltered, or not at all.
    """

    def __init__(
        self,
        sock: socket.socket,
        schedule: _Schedule,
        *,
        is_client: bool,
        peer: str,
        timeout: float,
        tap: Callable[[str, bytes], None] | None = None,
    ):
        self.sock = sock
        self.peer = peer
        self.timeout = timeout
        self._schedule = schedule
        c2s, s2c = schedule.derive("record/c2s"), schedule.derive("record/s2c")
        self._tx = AESGCM(c2s if is_client else s2c)
        self._rx = AESGCM(s2c if is_client else c2s)
        self._tx_count = 0
        self._rx_count = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._tap = tap  # tests only: sees every plaintext message ("sent"/"received")
        self._queue: queue.Queue[
            tuple[bytes | bytearray | memoryview, Future[None], bool] | None
        ] = queue.Queue()
        self._lock = threading.Lock()  # guards _queued and the inline send
        self._queued = 0  # messages handed to the writer and not yet written
        # each end's own buffers, grown to the largest record seen (up to a record's 4 MiB)
        self._tx_view = memoryview(bytearray(0))
        self._rx_header = memoryview(bytearray(_LEN.size))
        self._rx_body = memoryview(bytearray(0))
        self._rx_plain = memoryview(bytearray(0))
        self._writer = threading.Thread(target=self._write_loop, name=f"tx-{peer}", daemon=True)
        self._closed = False
        sock.settimeout(timeout)
        self._writer.start()

    def derive(self, label: str) -> bytes:
        """A 32-byte key both ends of this link derive and nobody else can."""
        return self._schedule.derive("derived/" + label)

    # -- records ---------------------------------------------------------------------------------
    # A record is ``length (4 bytes) | AES-GCM(plaintext) | tag (16 bytes)``, the length being the
    # associated data. Each end seals and opens its records in buffers of its own, allocated once:
    # a record costs one copy of the plaintext at most (the first record of a message, which
    # carries the message's length), and the bytes a message is received into are written once.
    @staticmethod
    def _nonce(counter: int) -> bytes:
        return counter.to_bytes(12, "big")

    def _seal_into(self, plain: bytes | bytearray | memoryview, out: memoryview) -> None:
        """One record of ``plain`` into ``out`` (exactly its length: header, ciphertext, tag)."""
        _LEN.pack_into(out, 0, len(out) - _LEN.size)
        self._tx.encrypt_into(
            self._nonce(self._tx_count), plain, out[: _LEN.size], out[_LEN.size :]
        )
        self._tx_count += 1

    def _send_record(self, plain: bytes | bytearray | memoryview) -> None:
        """Seal ``plain`` (at most RECORD_BYTES) into the writer's buffer and send it."""
        size = _LEN.size + len(plain) + 16
        if len(self._tx_view) < size:
            self._tx_view = memoryview(bytearray(size))
        out = self._tx_view[:size]
        self._seal_into(plain, out)
        self.sock.sendall(out)
        self.bytes_sent += len(out)

    def _recv_record(self, into: memoryview | None = None) -> memoryview:
        """The next record's plaintext, opened into ``into`` (exactly its size) or into this end's
        own buffer (valid until the next record)."""
        header = self._rx_header
        _recv_into(self.sock, header)
        (n,) = _LEN.unpack(header)
        if n > RECORD_BYTES + 16 or n < 16:
            raise ChannelClosed(f"the {self.peer} sent a record of {n} bytes (corrupt stream)")
        if len(self._rx_body) < n:
            self._rx_body = memoryview(bytearray(n))
        body = self._rx_body[:n]
        _recv_into(self.sock, body)
        if into is None and len(self._rx_plain) < n - 16:
            self._rx_plain = memoryview(bytearray(n - 16))
        plain = self._rx_plain[: n - 16] if into is None else into
        if len(plain) != n - 16:
            raise ChannelClosed(
                f"the {self.peer} sent a record of {n - 16} bytes where {len(plain)} were left of "
                "its message (corrupt stream)"
            )
        try:
            self._rx.decrypt_into(self._nonce(self._rx_count), body, header, plain)
        except Exception as exc:  # cryptography's InvalidTag
            raise ChannelClosed(
                f"a record from the {self.peer} failed authentication: the traffic was altered, "
                "replayed or reordered on the way"
            ) from exc
        self._rx_count += 1
        self.bytes_received += n + _LEN.size
        return plain

    # -- messages --------------------------------------------------------------------------------
    # A message goes out on the calling thread when the writer has nothing queued and it fits in
    # one record of at most INLINE_BYTES: sealed here and written without blocking (the socket is
    # non-blocking under its timeout), whatever the kernel does not take at once handed to the
    # writer. So a round of small messages costs no hand-over between threads, and two ends
    # that send at the same time still cannot block each other. Larger messages, and any message
    # while the writer is busy (their order is the records' nonces' order), go to the writer.
    def _write_loop(self) -> None:
        first = bytearray(0)  # a message's first record: its length, then its start (grown)
        while True:
            item = self._queue.get()
            if item is None:
                return
            data, future, raw = item
            try:
                view = memoryview(data).cast("B")
                if raw:  # the rest of a record sealed by send()
                    self.sock.sendall(view)
                else:
                    head = min(len(view), RECORD_BYTES - _MSG.size)
                    if len(first) < _MSG.size + head:
                        first = bytearray(_MSG.size + head)
                    _MSG.pack_into(first, 0, len(view))
                    first[_MSG.size : _MSG.size + head] = view[:head]
                    self._send_record(memoryview(first)[: _MSG.size + head])
                    for start in range(head, len(view), RECORD_BYTES):
                        self._send_record(view[start : start + RECORD_BYTES])
                with self._lock:
                    self._queued -= 1
                future.set_result(None)
            except BaseException as exc:
                future.set_exception(exc)
                # a half-written message leaves the stream unusable
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)

    def _seal_message(self, view: memoryview) -> bytearray:
        """A message of one record, sealed: length, AES-GCM of (its length, its bytes), tag."""
        plain = bytearray(_MSG.size + len(view))
        _MSG.pack_into(plain, 0, len(view))
        plain[_MSG.size :] = view
        record = bytearray(_LEN.size + len(plain) + 16)
        self._seal_into(plain, memoryview(record))
        return record

    def send(self, data: bytes | bytearray | memoryview) -> Future[None]:
        if self._closed:
            raise ChannelClosed(f"the channel to the {self.peer} is closed")
        if self._tap is not None:
            self._tap("sent", bytes(data))
        future: Future[None] = Future()
        view = memoryview(data).cast("B")
        with self._lock:
            if self._queued or len(view) > INLINE_BYTES or not self.sock.gettimeout():
                self._queued += 1
                self._queue.put((data, future, False))
                return future
            record = self._seal_message(view)
            self.bytes_sent += len(record)
            try:
                sent = os.write(self.sock.fileno(), record)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                future.set_exception(exc)
                return future
            if sent < len(record):
                self._queued += 1
                self._queue.put((memoryview(record)[sent:], future, True))
                return future
        future.set_result(None)
        return future

    def recv(self, expected: int | None = None) -> bytearray:
        """The next message; ``expected`` (bytes) guards against a diverged computation."""
        try:
            head = self._recv_record()
            if len(head) < _MSG.size:
                raise ChannelClosed(f"the {self.peer} sent a malformed message header")
            (total,) = _MSG.unpack(head[: _MSG.size])
            if expected is not None and total != expected:
                raise ChannelClosed(
                    f"the {self.peer} sent a {total}-byte message where {expected} were expected: "
                    "the parties' computations diverged"
                )
            got = len(head) - _MSG.size
            if got > total or (got < total and len(head) != RECORD_BYTES):
                raise ChannelClosed(f"the {self.peer} sent a malformed message header")
            out = bytearray(total)
            view = memoryview(out)
            view[:got] = head[_MSG.size :]
            while got < total:
                size = min(RECORD_BYTES, total - got)
                self._recv_record(view[got : got + size])
                got += size
        except TimeoutError as exc:
            raise PeerTimeout(
                f"the {self.peer} sent nothing for {self.timeout:g} s (it stopped or hangs)"
            ) from exc
        if self._tap is not None:
            self._tap("received", bytes(out))
        return out

    def wait(self, future: Future[None]) -> None:
        try:
            future.result(timeout=self.timeout * 4)
        except TimeoutError as exc:
            raise PeerTimeout(f"the {self.peer} stopped reading for {self.timeout:g} s") from exc
        except OSError as exc:
            raise ChannelClosed(f"the connection to the {self.peer} broke: {exc}") from exc

    def abort(self, error: BaseException) -> None:
        """Tell the peer, inside the channel, why the session ends here (best effort)."""
        kind = (
            b"T"
            if isinstance(error, PeerTimeout)
            else b"A"
            if isinstance(error, PeerAuthError)
            else b"E"
        )
        with contextlib.suppress(Exception):
            self.wait(self.send(ABORT + kind + str(error).encode()[:2000]))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=self.timeout)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def parse_rendezvous(rendezvous: str) -> tuple[str, int]:
    parts = urlsplit(rendezvous)
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        raise MPCError(f"the rendezvous must look like tcp://host:port, got {rendezvous!r}")
    return parts.hostname, parts.port


@contextlib.contextmanager
def listen(host: str, port: int) -> Iterator[socket.socket]:
    """A listening socket bound to exactly ``host`` (never every interface), closed on exit."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MPCError(f"cannot resolve the rendezvous host {host!r}: {exc}") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise MPCError(
            f"cannot listen on the rendezvous address {host}:{port} ({exc}); it must be an "
            "address of this host, and the port free"
        ) from exc
    sock.listen(4)
    try:
        yield sock
    finally:
        sock.close()


def accept_peers(
    host: str,
    port: int,
    psks: dict[str, bytes],
    *,
    session_id: str,
    job_digest: bytes,
    window: float,
    tap: Callable[[str, bytes], None] | None = None,
) -> dict[str, Channel]:
    """The model owner's side: accept each expected role once, within ``window`` seconds.

    ``psks`` maps each expected role ("data_owner", "dealer") to its link's pre-shared key. A client
    that fails the handshake aborts the session (:class:`PeerAuthError`), so an impostor can make a
    session fail but never join it. The listening socket is closed as soon as every role has joined
    (or on failure): the port serves this one session only.
    """
    deadline = time.monotonic() + window
    channels: dict[str, Channel] = {}
    names = {"data_owner": "data owner's worker", "dealer": "dealer"}
    try:
        with listen(host, port) as server:
            while len(channels) < len(psks):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = ", ".join(names[r] for r in psks if r not in channels)
                    raise PeerTimeout(
                        f"the {missing} did not join the rendezvous at {host}:{port} within "
                        f"{window:g} s"
                    )
                server.settimeout(remaining)
                try:
                    sock, address = server.accept()
                except TimeoutError:
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(min(remaining, 10.0))
                framing = Framing(sock)
                try:
                    hello, role = server_hello(framing.recv)
                    if role not in psks or role in channels:
                        raise PeerAuthError(f"the role {role!r} {_VERDICT_TEXT[UNEXPECTED]}")
                    spec = LinkSpec(
                        session_id, link_name("model_owner", role), psks[role], job_digest
                    )
                    schedule = server_handshake(spec, hello, framing.send, framing.recv)
                except (PeerAuthError, ChannelClosed, TimeoutError, OSError) as exc:
                    sock.close()
                    raise PeerAuthError(
                        f"rejected a connection to the rendezvous {host}:{port} from "
                        f"{address[0]}:{address[1]}: {exc}; the session is aborted"
                    ) from exc
                channels[role] = Channel(
                    sock, schedule, is_client=False, peer=names[role], timeout=window, tap=tap
                )
    except BaseException as exc:
        for channel in channels.values():
            channel.abort(exc)
            channel.close()
        raise
    return channels


def connect(
    role: str,
    host: str,
    port: int,
    psk: bytes,
    *,
    session_id: str,
    job_digest: bytes,
    window: float,
    tap: Callable[[str, bytes], None] | None = None,
) -> Channel:
    """The data owner's or dealer's side: connect (retrying until the window ends), authenticate."""
    deadline = time.monotonic() + window
    last: Exception | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerTimeout(
                f"the model owner's worker did not accept at the rendezvous {host}:{port} within "
                f"{window:g} s ({last})"
            )
        try:
            sock = socket.create_connection((host, port), timeout=min(remaining, 5.0))
            break
        except OSError as exc:  # not listening yet
            last = exc
            time.sleep(min(0.1, max(0.0, remaining)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(min(max(deadline - time.monotonic(), 1.0), 10.0))
    framing = Framing(sock)
    spec = LinkSpec(session_id, link_name("model_owner", role), psk, job_digest)
    try:
        schedule = client_handshake(spec, role, framing.send, framing.recv)
    except (ChannelClosed, TimeoutError, OSError) as exc:
        sock.close()
        raise PeerAuthError(
            f"the handshake with the model owner's worker at {host}:{port} failed: {exc}"
        ) from exc
    except BaseException:
        sock.close()
        raise
    return Channel(
        sock, schedule, is_client=True, peer="model owner's worker", timeout=window, tap=tap
    )


# -- the data owner ↔ dealer link, relayed by the model owner's worker ------------------------------


def _over(channel: Channel) -> tuple[Send, Recv]:
    def send(data: bytes) -> None:
        channel.wait(channel.send(data))

    def recv() -> bytes:
        message = bytes(channel.recv())
        if message.startswith(ABORT):
            kind, text = message[len(ABORT) : len(ABORT) + 1], message[len(ABORT) + 1 :].decode()
            error = {b"T": PeerTimeout, b"A": PeerAuthError}.get(kind, MPCError)
            raise error(f"the model owner's worker ended the rendezvous: {text}")
        return message

    return send, recv


def relay_handshake(data_owner: Channel, dealer: Channel) -> None:
    """The model owner forwards the four handshake messages between the data owner and dealer.

    It sees only X25519 public keys, nonces and tags: it cannot compute the link's keys.
    """
    for source, target in ((data_owner, dealer), (dealer, data_owner)) * 2:
        message = source.recv()
        if len(message) > 1024:
            raise ChannelClosed("a relayed handshake message is too long")
        target.wait(target.send(message))


def relayed_key(
    role: str, via: Channel, psk: bytes, *, session_id: str, job_digest: bytes
) -> _Schedule:
    """The data owner's (client) or dealer's (server) side of the relayed handshake."""
    spec = LinkSpec(session_id, link_name("data_owner", "dealer"), psk, job_digest)
    send, recv = _over(via)
    if role == "data_owner":
        return client_handshake(spec, "data_owner", send, recv)
    hello, claimed = server_hello(recv)
    if claimed != "data_owner":
        raise PeerAuthError(f"the relayed handshake claims role {claimed!r}, not the data owner")
    return server_handshake(spec, hello, send, recv)
