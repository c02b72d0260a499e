"""A recorder replays CrypTen's seed-leak reconstruction: it breaks gloo, not the real workers.

CrypTen 0.4.1 over gloo sends the seeds of its zero-sharing generators (``_sync_seeds``) and the
dealer's per-party triple seeds (``TTPServer._setup_generators``) as plain int64 scalars. An
observer who holds those seeds regenerates party 1's masks and unmasks the share it opens in the
Beaver multiplication. :func:`attack` is that observer; it is run on

* every tensor torch.distributed saw in a gloo run (it must recover X: the attack is real),
* every plaintext message the channels of this project's real workers (:mod:`common.runtime.worker`,
  unchanged, running an influence appraisal whose candidate has X's shape) saw, and on the raw
  bytes of the data owner ↔ model owner connection, captured by a TCP proxy (it must recover
  nothing).

The parties are real processes over 127.0.0.1 (``tests/integration/attack_party.py``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.mpc.compat import import_crypten
from common.protocol import SessionKeys
from common.runtime.supervisor import free_port
from tests.integration.attack_party import make_w, make_x

pytestmark = pytest.mark.mpc

ROOT = Path(__file__).resolve().parents[2]
ROLES = ("model_owner", "data_owner", "dealer")
X_SHAPE = (64, 8)
W_SHAPE = (8, 4)
X_SEED, W_SEED = 20240611, 7
N = X_SHAPE[0] * X_SHAPE[1]
SCALE = 2**16  # CrypTen's fixed-point scale
# An unmasked value is accepted as plaintext when |encoding| < BOUND, i.e. |x| < 65,536; a wrong
# guess passes one element with probability 2^-31 and all 512 with 2^-15872.
BOUND = 2**32
SMALL = 1024  # a record of at most this many bytes is searched for seeds, at every byte offset
# The narrowest opening of X: this project's masked copy E = X − A crosses in 6 bytes an element
# (48 bits, docs/protocol.md "Narrow masked products"); CrypTen's openings are 8.
NARROW = 6
RUN_DEADLINE = 30.0


# -- recordings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    party: str
    direction: str  # "sent" or "received"
    op: str  # torch.distributed function, or "message" (a secure channel's plaintext)
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def load_recording(path: Path) -> list[Record]:
    records = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        records.append(
            Record(
                d["party"],
                d["direction"],
                d["op"],
                d["dtype"],
                tuple(d["shape"]),
                base64.b64decode(d["data"]),
            )
        )
    return records


# -- the observer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A kind of generator the observer knows how to rebuild from a seed of ``width`` bytes."""

    name: str
    width: int
    draw: Callable[[bytes], np.ndarray]  # the first ring draw of X's shape, flattened, uint64


def _torch_draw(seed: bytes) -> np.ndarray:
    """CrypTen's generators: ``torch.Generator().manual_seed(seed.item())`` and its ring draw."""
    crypten = import_crypten()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(seed, "little", signed=True))
    drawn = crypten.common.rng.generate_random_ring_element(X_SHAPE, generator=g)
    return drawn.numpy().reshape(-1).view(np.uint64)


def _stream_draw(key: bytes) -> np.ndarray:
    """This project's generators (AES-256-CTR), in case their keys ever travel instead."""
    from common.mpc.streams import StreamRng

    return StreamRng(key).int64(X_SHAPE).numpy().reshape(-1).view(np.uint64)


FAMILIES = (Family("torch-mt19937", 8, _torch_draw), Family("aes-ctr", 32, _stream_draw))


def _windows(data: bytes, width: int) -> set[bytes]:
    return {data[i : i + width] for i in range(len(data) - width + 1)}


def candidate_seeds(records: Iterable[Record], width: int) -> list[bytes]:
    """Every ``width``-byte window, at every offset, of every small record (int64 scalars included)."""
    found: set[bytes] = set()
    for r in records:
        if len(r.data) <= SMALL:
            found |= _windows(r.data, width)
    return sorted(found)


def candidate_openings(records: Iterable[Record]) -> list[np.ndarray]:
    """Every 8-byte-aligned run of X's size in every record, and every record of exactly X's
    narrow size read as 48-bit values: one of them is party 1's x - a."""
    found: dict[bytes, np.ndarray] = {}
    for r in records:
        for start in range(0, len(r.data) - 8 * N + 1, 8):
            chunk = r.data[start : start + 8 * N]
            found.setdefault(chunk, np.frombuffer(chunk, dtype="<u8"))
        if len(r.data) == NARROW * N:
            found.setdefault(r.data, _narrow(r.data))
    return list(found.values())


def _narrow(data: bytes) -> np.ndarray:
    """A narrow opening's 48-bit values (low 4 bytes of each, then its next 2), sign-extended to
    64 bits: the opening as an attacker working in the full ring would hold it."""
    import torch

    from common.mpc.ringmath import from_low_bytes

    wire = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    values = from_low_bytes(wire, NARROW, (N,))
    values = (values << (64 - 8 * NARROW)) >> (64 - 8 * NARROW)  # sign-extend
    return values.numpy().view("<u8")


@dataclass
class Solution:
    family: str
    prev: bytes  # party 1's zero-sharing seeds (its "prev" is party 0's "next")
    next: bytes
    ttp: bytes  # the dealer's seed for party 1's triple shares
    x_hat: np.ndarray


@dataclass
class Report:
    seeds: dict[str, int] = field(default_factory=dict)  # candidates tried, per family
    openings: int = 0
    solutions: list[Solution] = field(default_factory=list)

    @property
    def x_hat(self) -> np.ndarray | None:
        return self.solutions[0].x_hat if self.solutions else None


def _unmask(opening: np.ndarray, prev: np.ndarray, nxt: np.ndarray, ttp: np.ndarray) -> np.ndarray:
    """Party 1's program, replayed: ``x_1 = R_prev - R_next + enc(X)`` (PRZS, the first draw of
    both generators, since X is shared first) and ``a_1 = R_ttp`` (the first draw of its triple
    generator), so ``enc(X) = (x_1 - a_1) - R_prev + R_next + R_ttp`` in the ring."""
    return (opening - prev + nxt + ttp).view(np.int64)


def _plausible(encoded: np.ndarray) -> bool:
    """Every element a small fixed-point number (real data, not ring noise), and not all zero: the
    model owner's share of X unmasks to 0 with its own seeds, since it added no input to X."""
    return bool((np.abs(encoded) < BOUND).all() and encoded.any())


def _search(draws: np.ndarray, opening: np.ndarray) -> list[tuple[int, int, int]]:
    """All (prev, next, ttp) index triples that unmask ``opening`` into plausible plaintext.

    Meet in the middle on the first element: for every (next, ttp) pair, the prev draw must lie
    within BOUND of ``o + R_next + R_ttp``; a 2^24-bucket table filters the pairs, an exact sorted
    lookup confirms them, and the survivors are checked on every element.
    """
    n = len(draws)
    if n == 0:
        return []
    first = np.ascontiguousarray(draws[:, 0])
    order = np.argsort(first)
    ordered = first[order]
    shift = np.uint64(40)  # bucket width 2^40 > 2 * BOUND: [lo, lo + 2 BOUND) meets ≤ 2 buckets
    table = np.zeros(1 << 24, dtype=bool)
    buckets = (first >> shift).astype(np.int64)
    table[buckets] = True
    table[(buckets - 1) % (1 << 24)] = True
    span = np.uint64(2 * BOUND)
    o = opening[:1]
    block = max(1, (1 << 22) // n)
    hits: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        rows = np.arange(start, min(n, start + block))
        lo = o + first[rows, None] + first[None, :] - np.uint64(BOUND)  # wraps mod 2^64
        r, c = np.nonzero(table[(lo >> shift).astype(np.int64)])
        if not len(r):
            continue
        low = lo[r, c]
        j = np.searchsorted(ordered, low) % n
        ok = (ordered[j] - low) < span
        for rr, cc, jj in zip(rows[r[ok]], c[ok], order[j[ok]], strict=True):
            hits.append((int(jj), int(rr), int(cc)))
    out = []
    for prev, nxt, ttp in hits:
        if _plausible(_unmask(opening, draws[prev], draws[nxt], draws[ttp])):
            out.append((prev, nxt, ttp))
    return out


def reconstruct(
    seeds: dict[str, list[bytes]], openings: list[np.ndarray], families: Iterable[Family]
) -> Report:
    report = Report(openings=len(openings))
    for family in families:
        candidates = seeds[family.name]
        report.seeds[family.name] = len(candidates)
        if not candidates:
            continue
        draws = np.stack([family.draw(s) for s in candidates])
        for opening in openings:
            for prev, nxt, ttp in _search(draws, opening):
                encoded = _unmask(opening, draws[prev], draws[nxt], draws[ttp])
                x_hat = (encoded.astype(np.float64) / SCALE).reshape(X_SHAPE)
                report.solutions.append(
                    Solution(family.name, candidates[prev], candidates[nxt], candidates[ttp], x_hat)
                )
    return report


def analyse(
    records: list[Record],
    families: Iterable[Family] = FAMILIES,
    openings: list[np.ndarray] | None = None,
) -> Report:
    """The observer on a recording of tensors or messages: seeds from small records, openings from
    every record of X's size or larger (or the ``openings`` given)."""
    families = tuple(families)
    seeds = {f.name: candidate_seeds(records, f.width) for f in families}
    return reconstruct(
        seeds, candidate_openings(records) if openings is None else openings, families
    )


def attack(records: list[Record]) -> np.ndarray | None:
    """X as recovered from the recording, or None."""
    return analyse(records).x_hat


def analyse_stream(
    streams: Iterable[bytes], opening: np.ndarray, families: Iterable[Family] = FAMILIES
) -> Report:
    """The observer on raw bytes: every window at every offset is a candidate seed. It is *handed*
    party 1's opened share (x_1 - a_1), which an observer of ciphertext would not even have."""
    families = tuple(families)
    streams = list(streams)
    seeds = {
        f.name: sorted(set().union(*(_windows(s, f.width) for s in streams))) for f in families
    }
    return reconstruct(seeds, [opening], families)


def setup_phase(records: list[Record]) -> list[Record]:
    """Each party's records up to its first one of X's size or more (the first Beaver opening).

    CrypTen sends its generator seeds while it sets up, before any opening; an appraisal's later
    rounds (hundreds of comparison messages) would only multiply the candidates to try."""
    out: list[Record] = []
    for party in ROLES:
        for r in (r for r in records if r.party == party):
            out.append(r)
            if len(r.data) >= NARROW * N:
                break
    return out


def _first_opening_end(stream: bytes) -> int | None:
    """The offset just past the first record of one direction of a connection big enough to hold
    an opening (the handshake framing and the channel's records both start with a 4-byte
    length), or None if there is none."""
    offset = 0
    while offset + 4 <= len(stream):
        (length,) = struct.unpack("!I", stream[offset : offset + 4])
        offset += 4 + length
        if length >= NARROW * N:
            return offset
    return None


def wire_setup_prefix(stream: bytes) -> bytes:
    """The bytes of one direction of a connection up to its first record big enough to hold an
    opening (all of it if there is none)."""
    end = _first_opening_end(stream)
    return stream if end is None else stream[:end]


def party1_opening(records: list[Record]) -> np.ndarray:
    """The data owner's first sent record of X's size or more starts with x_1 - a_1 (or is it, in
    48 bits: this project's E)."""
    for r in records:
        if r.party == "data_owner" and r.direction == "sent" and len(r.data) == NARROW * N:
            return _narrow(r.data)
        if r.party == "data_owner" and r.direction == "sent" and len(r.data) >= 8 * N:
            return np.frombuffer(r.data[: 8 * N], dtype="<u8")
    raise AssertionError("the recording holds no opened share of the data owner")


# -- running the parties --------------------------------------------------------------------------


class RecordingProxy:
    """A TCP relay on 127.0.0.1 that forwards one connection to ``target`` and keeps every byte."""

    def __init__(self, target: int, deadline: float = RUN_DEADLINE) -> None:
        self.target = target
        self.deadline = deadline
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(deadline)
        self.port: int = self.server.getsockname()[1]
        self.captured = {"c2s": bytearray(), "s2c": bytearray()}
        # (time, bytes captured so far) after each chunk, per direction: when each byte crossed
        self.arrivals: dict[str, list[tuple[float, int]]] = {"c2s": [], "s2c": []}
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.server.accept()
            self._sockets.append(client)
            end = time.monotonic() + self.deadline
            while True:  # the model owner may not listen yet
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
                    break
                except OSError:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.05)
            upstream.settimeout(None)
            self._sockets.append(upstream)
            for name, src, dst in (("c2s", client, upstream), ("s2c", upstream, client)):
                t = threading.Thread(target=self._pump, args=(name, src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, name: str, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                self.captured[name] += data
                self.arrivals[name].append((time.monotonic(), len(self.captured[name])))
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()
        self._accepter.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)

    def streams(self) -> list[bytes]:
        return [bytes(self.captured["c2s"]), bytes(self.captured["s2c"])]

    def setup_prefixes(self) -> list[bytes]:
        """Each direction's bytes up to the end of the set-up: the moment the first record big
        enough to hold an opening had crossed, in either direction.

        With the masked products only the data owner sends an opening of X's size (E = X − A);
        the model owner's direction holds no such record, so it is cut at that same moment."""
        names = ("c2s", "s2c")
        cuts = {name: _first_opening_end(bytes(self.captured[name])) for name in names}
        ends = [
            next(t for t, n in self.arrivals[name] if n >= cut)
            for name, cut in cuts.items()
            if cut is not None
        ]
        end = min(ends, default=float("inf"))
        out = []
        for name in names:
            crossed = max((n for t, n in self.arrivals[name] if t <= end), default=0)
            cut = cuts[name]
            out.append(bytes(self.captured[name][: crossed if cut is None else min(crossed, cut)]))
        return out


def _kill(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each party's process group, SIGKILL after a grace period, reap every one."""
    for p in processes:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    end = time.monotonic() + 3
    for p in processes:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@dataclass
class Run:
    workdir: Path
    keys: SessionKeys
    proxy: RecordingProxy | None

    def recording(self, *roles: str) -> list[Record]:
        out: list[Record] = []
        for role in roles or ROLES:
            out += load_recording(self.workdir / f"{role}.rec.jsonl")
        return out

    def output(self, role: str) -> dict[str, Any]:
        return dict(json.loads((self.workdir / f"{role}.out.json").read_text()))


def _gloo_command(role: str, workdir: Path, port: int, keys: SessionKeys) -> list[str]:
    """The naive CrypTen wiring of tests/integration/attack_party.py, for CrypTen's gloo."""
    config = {
        "mode": "gloo",
        "role": role,
        "port": port,
        "x_seed": X_SEED,
        "w_seed": W_SEED,
        "x_shape": list(X_SHAPE),
        "w_shape": list(W_SHAPE),
        "timeout": RUN_DEADLINE,
        "recording": str(workdir / f"{role}.rec.jsonl"),
        "output": str(workdir / f"{role}.out.json"),
    }
    path = workdir / f"{role}.json"
    path.write_text(json.dumps(config))
    return [sys.executable, "-m", "tests.integration.attack_party", str(path)]


def worker_inputs(workdir: Path) -> dict[str, Path]:
    """A small appraisal whose candidate (with its bias column) has exactly X's shape: 64 × 8."""
    from common.ml.data import save_npz

    rng = np.random.default_rng(3)
    features = X_SHAPE[1] - 1

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        X = rng.random((n, features))
        return X, (X[:, 0] + X[:, 1] > 1.0).astype(np.int64) + (X[:, 2] > 0.8)

    files = {}
    for name, n in (("train", 100), ("test", 50), ("candidate", X_SHAPE[0])):
        files[name] = save_npz(workdir / f"{name}.npz", data(n))
    return files


def _worker_command(
    role: str, workdir: Path, port: int, keys: SessionKeys, connect_port: int
) -> list[str]:
    """This project's real worker for ``role``; the data owner connects through ``connect_port``."""
    from common.ml.data import load_dataset
    from common.protocol import CandidateMeta, JobSpec
    from common.runtime.supervisor import party_config

    files = worker_inputs(workdir)
    candidate = load_dataset(files["candidate"])
    job = JobSpec(
        n_features=X_SHAPE[1] - 1,
        n_classes=3,
        candidates=[CandidateMeta(name="candidate", n_samples=candidate.n_samples)],
        n_train=100,
        n_test=50,
    )
    inputs: dict[str, dict[str, Any]] = {
        "model_owner": {"train": str(files["train"]), "test": str(files["test"])},
        "data_owner": {"candidates": [str(files["candidate"])]},
        "dealer": {},
    }
    config = party_config(
        role,
        job=job,
        rendezvous=f"tcp://127.0.0.1:{connect_port if role == 'data_owner' else port}",
        workdir=workdir,
        timeout=RUN_DEADLINE,
        session_id="attack-secure",
        keys=keys.for_role(role),
        **inputs[role],
    )
    path = workdir / f"{role}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config.model_dump_json())
    recording = workdir / f"{role}.rec.jsonl"
    return [
        sys.executable,
        "-m",
        "tests.integration.attack_party",
        "worker",
        str(path),
        str(recording),
        role,
    ]


@contextlib.contextmanager
def parties(mode: str, workdir: Path) -> Iterator[Run]:
    """Run the three parties of ``mode`` ("gloo": CrypTen's own wiring; "secure": this project's
    real workers) to completion; every process and port is gone after."""
    port = free_port()
    keys = SessionKeys.new()
    proxy = RecordingProxy(port) if mode == "secure" else None
    processes: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for role in ROLES:
            if proxy is not None:
                command = _worker_command(role, workdir, port, keys, proxy.port)
            else:
                command = _gloo_command(role, workdir, port, keys)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            if mode == "gloo" and Path("/sys/class/net/lo").exists():
                env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own connections stay on loopback
            log = open(workdir / f"{role}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        end = time.monotonic() + RUN_DEADLINE
        while True:
            codes = [p.poll() for p in processes]
            if codes == [0, 0, 0]:
                break
            failed = [r for r, c in zip(ROLES, codes, strict=True) if c not in (None, 0)]
            if failed or time.monotonic() > end:
                _kill(processes)
                tails = "\n".join(
                    f"--- {r}:\n" + (workdir / f"{r}.log").read_text(errors="replace")[-3000:]
                    for r in ROLES
                )
                errors = "\n".join(
                    (workdir / f"{r}.error.json").read_text()
                    for r in ROLES
                    if (workdir / f"{r}.error.json").exists()
                )
                what = f"{failed} failed" if failed else f"not done in {RUN_DEADLINE:g} s"
                pytest.fail(f"{mode} run: {what}\n{tails}\n{errors}")
            time.sleep(0.05)
        if proxy is not None:
            proxy.close()
        yield Run(workdir, keys, proxy)
    finally:
        _kill(processes)
        if proxy is not None:
            proxy.close()
        for log in logs:
            log.close()


def _expected() -> tuple[np.ndarray, np.ndarray]:
    x = make_x(X_SEED, list(X_SHAPE))
    w = make_w(W_SEED, list(W_SHAPE))
    return x.double().numpy(), (x.double() @ w.double()).numpy()


def _assert_correct_result(run: Run) -> np.ndarray:
    _, expected = _expected()
    mo, do = run.output("model_owner"), run.output("data_owner")
    assert mo["result_ring"] == do["result_ring"]
    for out in (mo, do):
        np.testing.assert_allclose(np.array(out["result"]), expected, atol=1e-3)
    return np.frombuffer(base64.b64decode(mo["result_ring"]), dtype="<i8")


def _assert_correct_appraisal(run: Run) -> None:
    """Both owners' workers revealed the same score, the plaintext twin's."""
    from common.ml.data import load_dataset
    from common.ml.model import influence_score, prepare_model_owner

    results = [
        json.loads((run.workdir / f"{role}.result.json").read_text())["results"][0]
        for role in ("model_owner", "data_owner")
    ]
    assert results[0]["score"] == results[1]["score"]
    files = worker_inputs(run.workdir / "plain")
    train, test, cand = (load_dataset(files[k]) for k in ("train", "test", "candidate"))
    state = prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=3)
    expected = influence_score(state, cand.X, cand.y)
    assert results[0]["score"] == pytest.approx(expected, rel=1e-2, abs=1e-4)


def _seed_bytes(value: int) -> bytes:
    """A generator's ``initial_seed()`` (unsigned) as the int64 bytes that went on the wire."""
    return (value % 2**64).to_bytes(8, "little")


# -- tests ----------------------------------------------------------------------------------------


def test_recorder_recovers_the_data_owners_input_from_crypten_gloo(tmp_path: Path) -> None:
    """The attack is real: on CrypTen's own transport it recovers X from the tensors alone."""
    x, _ = _expected()
    with parties("gloo", tmp_path) as run:
        _assert_correct_result(run)
        records = run.recording()
        truth = run.output("data_owner")["seeds"]

    report = analyse(records)
    x_hat = attack(records)
    assert x_hat is not None, f"the attack failed on gloo: {report}"
    assert np.abs(x_hat - x).max() < 1e-4
    # it found exactly the seeds CrypTen sent in the clear: the two zero-sharing seeds of party 1
    # and the dealer's seed for party 1's triples
    torch_hits = {(s.prev, s.next, s.ttp) for s in report.solutions if s.family == "torch-mt19937"}
    real = (_seed_bytes(truth["prev"]), _seed_bytes(truth["next"]), _seed_bytes(truth["ttp"]))
    assert real in torch_hits
    # (next, ttp) enter the unmasking symmetrically; nothing else fits
    assert torch_hits <= {real, (real[0], real[2], real[1])}

    # the byte-stream variant used on the secure wire below works too: the data owner's traffic
    # laid end to end, every 8-byte window a candidate seed
    do_records = [r for r in records if r.party == "data_owner"]
    stream = b"".join(r.data for r in do_records)
    streamed = analyse_stream([stream], party1_opening(records), FAMILIES[:1])
    assert streamed.x_hat is not None
    assert np.abs(streamed.x_hat - x).max() < 1e-4


def test_recorder_learns_nothing_from_the_secure_transport(tmp_path: Path) -> None:
    """The same observer, on the plaintext the channels carried and on the raw wire, gets nothing."""
    with parties("secure", tmp_path) as run:
        _assert_correct_appraisal(run)  # (a) the real workers' appraisal still works
        records = run.recording()
        assert run.proxy is not None
        wire = run.proxy.streams()
        setup_wire = run.proxy.setup_prefixes()
        keys = run.keys

    # the recording is complete: the data owner's opened share x_1 - a_1 went through the taps
    opening = party1_opening(records)
    assert any(np.array_equal(opening, o) for o in candidate_openings(records))

    # (b) on every plaintext message of the set-up (where CrypTen leaks its seeds), the attack has
    # candidates to try against the data owner's opened share x_1 - a_1, but none unmasks X
    setup = setup_phase(records)
    report = analyse(setup, openings=[opening])
    assert report.seeds["torch-mt19937"] > 0 and report.seeds["aes-ctr"] > 0
    assert report.openings > 0
    assert report.solutions == [], report.solutions
    # not even the session's pre-shared keys travel inside the encryption
    plaintext = b"".join(r.data for r in records)
    for hex_key in (keys.mo_do, keys.mo_dealer, keys.do_dealer):
        assert hex_key is not None
        assert bytes.fromhex(hex_key) not in plaintext

    # (c) on the raw wire of the set-up, every 8- and 32-byte window at every offset is a candidate
    # seed, and the attacker is even handed the opened share: still nothing
    assert sum(len(s) for s in wire) > 2 * 8 * N  # both owners' shares crossed the proxy
    assert all(setup_wire)  # both directions' set-up (the handshake at least) is searched
    streamed = analyse_stream(setup_wire, opening)
    assert streamed.seeds["torch-mt19937"] > NARROW * N  # the prefix holds E at least
    assert streamed.solutions == []

    # (d) the wire shows no plaintext: no 16-byte window of any logged message (the opened shares
    # of the result among them), no pre-shared key, raw or hex
    on_wire: set[bytes] = set().union(*(_windows(s, 16) for s in wire))
    logged = set().union(*(_windows(r.data, 16) for r in records))
    assert len(logged) > 8 * N
    assert not (logged & on_wire)
    for hex_key in (keys.mo_do, keys.mo_dealer, keys.do_dealer):
        assert hex_key is not None
        for form in (bytes.fromhex(hex_key), hex_key.encode(), hex_key.upper().encode()):
            assert not any(form in s for s in wire)
    # the window check can fire: one message spliced into the wire is found at once
    spliced = _windows(wire[0] + max(records, key=lambda r: len(r.data)).data, 16)
    assert logged & spliced


def test_the_attack_also_rebuilds_the_secure_generators_from_leaked_keys() -> None:
    """Control for (b): had the AES-CTR keys crossed inside a message, the observer would win."""
    from common.mpc.streams import StreamRng

    x, _ = _expected()
    keys = [os.urandom(32) for _ in range(3)]
    prev, nxt, ttp = (StreamRng(k).int64(X_SHAPE) for k in keys)
    encoded = (torch.from_numpy(x) * SCALE).long()
    opening = prev - nxt + encoded - ttp  # party 1's x_1 - a_1, as in the secure run
    filler = os.urandom(200)
    records = [
        Record("data_owner", "sent", "message", "bytes", (240,), filler[:5] + keys[0] + filler),
        Record("dealer", "received", "message", "bytes", (64,), keys[1] + keys[2]),
        Record("data_owner", "sent", "message", "bytes", (8 * N,), opening.numpy().tobytes()),
    ]
    x_hat = attack(records)
    assert x_hat is not None
    assert np.abs(x_hat - x).max() < 1e-4
