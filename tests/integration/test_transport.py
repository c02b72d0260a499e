"""The secure transport under attack: impostors, tampering, replay, recording, rendezvous hygiene.

Real sockets on 127.0.0.1; each party's side runs in a thread of this process.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from common.errors import ChannelClosed, PeerAuthError, PeerTimeout
from common.mpc import transport
from common.mpc.transport import Channel
from common.runtime.supervisor import free_port

SESSION = "session-under-test"
DIGEST = b"\x01" * 32


def keys() -> dict[str, bytes]:
    return {"mo_do": os.urandom(32), "mo_dealer": os.urandom(32), "do_dealer": os.urandom(32)}


class Proxy:
    """A man in the middle on 127.0.0.1: forwards (or alters) both directions and records them."""

    def __init__(
        self, target: int, alter: Callable[[str, bytes, int], list[bytes]] | None = None
    ) -> None:
        self.target = target
        self.alter = alter
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.captured: dict[str, bytearray] = {"c2s": bytearray(), "s2c": bytearray()}
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.server.accept()
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            for name, src, dst in (("c2s", client, upstream), ("s2c", upstream, client)):
                t = threading.Thread(target=self._pump, args=(name, src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, name: str, src: socket.socket, dst: socket.socket) -> None:
        count = 0
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                self.captured[name] += data
                out = [data] if self.alter is None else self.alter(name, data, count)
                count += 1
                for piece in out:
                    dst.sendall(piece)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        for s in self._sockets:
            s.close()

    def wire(self) -> bytes:
        return bytes(self.captured["c2s"] + self.captured["s2c"])


@contextlib.contextmanager
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def _mo(port: int, k: dict[str, bytes], roles: tuple[str, ...], **kw: Any) -> dict[str, Channel]:
    psks = {"data_owner": k["mo_do"], "dealer": k["mo_dealer"]}
    return transport.accept_peers(
        "127.0.0.1",
        port,
        {r: psks[r] for r in roles},
        session_id=kw.get("session_id", SESSION),
        job_digest=kw.get("digest", DIGEST),
        window=kw.get("window", 10.0),
        tap=kw.get("tap"),
    )


def _client(role: str, port: int, psk: bytes, **kw: Any) -> Channel:
    return transport.connect(
        role,
        "127.0.0.1",
        port,
        psk,
        session_id=kw.get("session_id", SESSION),
        job_digest=kw.get("digest", DIGEST),
        window=kw.get("window", 10.0),
        tap=kw.get("tap"),
    )


def _close(*channels: Channel) -> None:
    for c in channels:
        c.close()


def test_three_parties_authenticate_and_exchange_through_a_recorder() -> None:
    """Every byte a recorder sees is ciphertext: no plaintext window, no key, no derived key."""
    k = keys()
    port = free_port()
    proxy = Proxy(port)
    plaintexts: list[bytes] = []
    lock = threading.Lock()

    def tap(direction: str, data: bytes) -> None:
        with lock:
            plaintexts.append(data)

    secret = bytes(range(256)) * 64  # structured, so any leak of it is visible
    try:
        with pool() as ex:
            mo = ex.submit(_mo, port, k, ("data_owner", "dealer"), tap=tap)
            time.sleep(0.2)
            do = ex.submit(_client, "data_owner", proxy.port, k["mo_do"], tap=tap)
            dealer = ex.submit(_client, "dealer", port, k["mo_dealer"])
            channels = mo.result(timeout=20)
            do_ch, dealer_ch = do.result(timeout=20), dealer.result(timeout=20)
            # the data owner and the dealer agree on a key through the model owner's relay
            relay = ex.submit(transport.relay_handshake, channels["data_owner"], channels["dealer"])
            do_link = ex.submit(
                transport.relayed_key,
                "data_owner",
                do_ch,
                k["do_dealer"],
                session_id=SESSION,
                job_digest=DIGEST,
            )
            dealer_link = transport.relayed_key(
                "dealer", dealer_ch, k["do_dealer"], session_id=SESSION, job_digest=DIGEST
            )
            relay.result(timeout=20)
            assert do_link.result(timeout=20).derive("x") == dealer_link.derive("x")
            # full duplex, large messages both ways at once (more than one record each)
            big = os.urandom(5 << 20)
            f1 = do_ch.send(secret + big)
            f2 = channels["data_owner"].send(big + secret)
            assert channels["data_owner"].recv() == secret + big
            assert do_ch.recv() == big + secret
            do_ch.wait(f1)
            channels["data_owner"].wait(f2)
            assert do_ch.derive("przs/0") == channels["data_owner"].derive("przs/0")
            assert do_ch.derive("przs/0") != dealer_ch.derive("przs/0")
            _close(do_ch, dealer_ch, *channels.values())
    finally:
        proxy.close()
    wire = proxy.wire()
    assert len(wire) > 2 * len(big)
    # every plaintext message the parties exchanged is absent from the wire
    assert plaintexts
    for message in plaintexts:
        step = max(16, len(message) // 24)  # ~24 windows spread over each message
        for start in range(0, len(message) - 15, step):
            assert message[start : start + 16] not in wire
    assert secret[:32] not in wire
    for key in k.values():
        assert key not in wire and key.hex().encode() not in wire
    assert do_link.result().derive("triples") not in wire


def test_impostor_without_the_key_cannot_join_and_aborts_the_session() -> None:
    k = keys()
    port = free_port()
    with pool() as ex:
        mo = ex.submit(_mo, port, k, ("data_owner",))
        time.sleep(0.2)
        with pytest.raises(PeerAuthError, match="refused this party: it does not hold"):
            _client("data_owner", port, os.urandom(32))
        with pytest.raises(PeerAuthError, match=r"rejected a connection .* from 127\.0\.0\.1"):
            mo.result(timeout=20)
    # the session is over: the port no longer accepts the genuine party either
    with pytest.raises(PeerTimeout):
        _client("data_owner", port, k["mo_do"], window=1.0)


def test_impostor_posing_as_the_model_owner_is_detected_by_the_data_owner() -> None:
    """A fake listener that skips verification and claims success cannot forge its tag."""
    k = keys()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def impostor() -> None:
        conn, _ = server.accept()
        with conn:
            framing = transport.Framing(conn)
            framing.recv()  # the data owner's hello
            framing.send(transport.MAGIC + os.urandom(64))  # its own public key and nonce
            framing.recv()  # the data owner's tags
            framing.send(bytes([transport.OK]) + os.urandom(32))  # "accepted", forged tag

    with pool() as ex:
        fake = ex.submit(impostor)
        with pytest.raises(PeerAuthError, match="failed authentication"):
            _client("data_owner", port, k["mo_do"])
        fake.result(timeout=20)
    server.close()


def test_a_peer_with_other_session_parameters_is_refused_by_name() -> None:
    k = keys()
    port = free_port()
    with pool() as ex:
        mo = ex.submit(_mo, port, k, ("data_owner",))
        time.sleep(0.2)
        with pytest.raises(PeerAuthError, match="different session parameters"):
            _client("data_owner", port, k["mo_do"], digest=b"\x02" * 32)
        with pytest.raises(PeerAuthError, match="different session parameters"):
            mo.result(timeout=20)


def test_a_key_of_another_session_is_refused() -> None:
    k = keys()
    port = free_port()
    with pool() as ex:
        mo = ex.submit(_mo, port, k, ("data_owner",))
        time.sleep(0.2)
        with pytest.raises(PeerAuthError):
            _client("data_owner", port, k["mo_do"], session_id="another-session")
        with pytest.raises(PeerAuthError):
            mo.result(timeout=20)


def test_a_second_connection_for_a_joined_role_aborts() -> None:
    k = keys()
    port = free_port()
    with pool() as ex:
        mo = ex.submit(_mo, port, k, ("data_owner", "dealer"))
        time.sleep(0.2)
        first = _client("data_owner", port, k["mo_do"])
        with contextlib.suppress(PeerAuthError, ChannelClosed, PeerTimeout):
            _client("data_owner", port, k["mo_do"], window=3.0)
        with pytest.raises(PeerAuthError, match="not expected"):
            mo.result(timeout=20)
        first.close()


@pytest.mark.parametrize("attack", ["flip", "replay", "drop"])
def test_altered_replayed_or_dropped_records_are_detected(attack: str) -> None:
    k = keys()
    port = free_port()
    state = {"done": False}

    def alter(direction: str, data: bytes, count: int) -> list[bytes]:
        # the data owner's 3rd send onwards carries records (hello and tags come first)
        if direction != "c2s" or state["done"] or len(data) < 200:
            return [data]
        state["done"] = True
        if attack == "flip":
            changed = bytearray(data)
            changed[len(changed) // 2] ^= 0x40
            return [bytes(changed)]
        if attack == "replay":
            return [data, data]
        return []  # drop

    proxy = Proxy(port, alter)
    try:
        with pool() as ex:
            mo = ex.submit(_mo, port, k, ("data_owner",), window=3.0)
            time.sleep(0.2)
            do_ch = _client("data_owner", proxy.port, k["mo_do"], window=3.0)
            mo_ch = mo.result(timeout=20)["data_owner"]
            do_ch.wait(do_ch.send(os.urandom(1000)))
            do_ch.wait(do_ch.send(os.urandom(1000)))
            with pytest.raises((ChannelClosed, PeerTimeout)) as caught:
                mo_ch.recv()
                mo_ch.recv()
                mo_ch.recv()
            if attack == "flip":  # the flipped byte lands in a record's body or, with another
                # segmentation, in its length header: either way the alteration is named
                message = str(caught.value)
                assert "failed authentication" in message or "corrupt stream" in message, message
            _close(do_ch, mo_ch)
    finally:
        proxy.close()
    assert state["done"]


def test_rendezvous_listens_only_on_the_negotiated_address() -> None:
    port = free_port()
    with transport.listen("127.0.0.1", port) as server:
        assert server.getsockname() == ("127.0.0.1", port)
        # 127.0.0.2 is this host too (loopback), but not the negotiated address
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
            pass
    # 192.0.2.1 (TEST-NET) is not an address of this host
    with (
        pytest.raises(transport.MPCError, match="cannot listen on the rendezvous address"),
        transport.listen("192.0.2.1", port),
    ):
        pass


def test_rendezvous_window_closes_the_port() -> None:
    k = keys()
    port = free_port()
    start = time.monotonic()
    with pytest.raises(PeerTimeout, match="data owner's worker did not join"):
        _mo(port, k, ("data_owner",), window=1.0)
    assert time.monotonic() - start < 5
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_client_that_speaks_something_else_is_refused() -> None:
    k = keys()
    port = free_port()
    with pool() as ex:
        mo = ex.submit(_mo, port, k, ("data_owner",))
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(OSError):
                s.recv(100)
        with pytest.raises(PeerAuthError):
            mo.result(timeout=20)


def test_a_joined_peer_learns_why_the_rendezvous_failed() -> None:
    """The dealer never comes: the data owner, already joined, gets a timeout, not a closed socket."""
    k = keys()
    port = free_port()
    with pool() as ex:
        mo = ex.submit(_mo, port, k, ("data_owner", "dealer"), window=1.5)
        time.sleep(0.2)
        do_ch = _client("data_owner", port, k["mo_do"], window=1.5)
        with pytest.raises(PeerTimeout, match="ended the rendezvous: the dealer did not join"):
            transport.relayed_key(
                "data_owner", do_ch, k["do_dealer"], session_id=SESSION, job_digest=DIGEST
            )
        with pytest.raises(PeerTimeout):
            mo.result(timeout=20)
        do_ch.close()


def test_both_ends_sending_at_once_neither_blocks_and_order_holds() -> None:
    """Both ends send a burst of messages before either reads: small ones (on the caller's
    thread), ones that fill the socket's buffers (the rest handed to the writer) and large ones
    (the writer's), all of it 52 MB each way. Nothing blocks, and each end receives the other's
    messages whole and in order."""
    k, port = keys(), free_port()
    rng = np.random.default_rng(3)
    sizes = [1 << 20] * 12 + [8, 900_000, 5_000_000, 1, 700_000, 12_000_000, 64, 1 << 20] * 2
    bursts = {
        side: [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
        for side in ("mo", "do")
    }
    with pool() as ex:
        mo_future = ex.submit(_mo, port, k, ("data_owner",))
        do = _client("data_owner", port, k["mo_do"])
        mo = mo_future.result()["data_owner"]
        try:

            def burst(channel: Channel, mine: list[bytes]) -> list[bytes]:
                futures = [channel.send(m) for m in mine]
                got = [bytes(channel.recv()) for _ in mine]
                for f in futures:
                    channel.wait(f)
                return got

            at_do = ex.submit(burst, do, bursts["do"])
            at_mo = burst(mo, bursts["mo"])
            assert at_mo == bursts["do"] and at_do.result(timeout=60) == bursts["mo"]
            assert mo.bytes_sent == do.bytes_received and do.bytes_sent == mo.bytes_received
        finally:
            _close(mo, do)
