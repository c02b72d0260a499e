"""A WAN for the benchmark: the three parties on three "hosts" with a slow, distant link between them.

Network namespaces joined by veth pairs, each pair rate-limited by ``tc tbf`` in both directions;
this kernel has no ``netem``, so the round-trip time comes from a user-space TCP relay
(:class:`DelayRelay`, asyncio) in a fourth namespace, the "internet" between the hosts, which
holds every chunk it forwards for RTT/2 in each direction (so a request and its answer take one
RTT, and a bulk transfer still streams: chunks are delayed, not serialised)::

    mo  198.19.1.1/30 ──veth── 198.19.1.2  ┐
    do  198.19.2.1/30 ──veth── 198.19.2.2  ├ wan: the relay listens on .2.2 and .3.2, forwards to
    dl  198.19.3.1/30 ──veth── 198.19.3.2  ┘      the model owner's rendezvous 198.19.1.1

The model owner's worker listens on its own address; the data owner's worker and the dealer
connect to the relay's address on their link (their rendezvous), and every byte of the session
crosses the relay (this project's transport has one TCP connection per peer, both through the
model owner). Each worker is this project's real worker (:func:`common.runtime.worker.main`, after
the fork server's preload), started under ``ip netns exec`` and followed by the project's
supervisor.

The namespaces (``da<tag>-mo``, ``-do``, ``-dl``, ``-wan``) and their addresses exist only while
:func:`wan_network` is open; they are deleted on exit, error, Ctrl-C or SIGTERM.

``python benchmarks/wan.py relay --listen H:P[,H:P] --to H:P --delay-ms D`` runs the relay alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MO, DO, DL = "198.19.1.1", "198.19.2.1", "198.19.3.1"
WAN_MO, WAN_DO, WAN_DL = "198.19.1.2", "198.19.2.2", "198.19.3.2"
CHUNK = 1 << 16
# The worker, after what the supervisor's fork server imports (common.runtime.preload): without it
# the first calls' lazy imports (torch._refs, sympy: seconds under load) fall inside the timed MPC
WORKER = (
    "import common.runtime.allocator, common.runtime.preload, sys; from common.runtime import worker; "
    "sys.exit(worker.main())"
)


# -- the relay -------------------------------------------------------------------------------------


class DelayRelay:
    """Forward TCP connections from each listening address to ``target``, every chunk delayed by
    ``delay`` seconds in each direction; counts the bytes forwarded each way."""

    def __init__(
        self, listen: Sequence[tuple[str, int]], target: tuple[str, int], delay: float
    ) -> None:
        self.listen, self.target, self.delay = list(listen), target, delay
        self.connect_seconds = 120.0  # how long a client is held while the target is not up
        self.upstream = 0  # bytes towards the target
        self.downstream = 0  # bytes back to the clients
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        for host, port in self.listen:
            self._servers.append(await asyncio.start_server(self._serve, host, port))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A peer may connect before the model owner's worker listens: hold its connection and
        # retry (a real network would refuse, and the peer retry; here the relay has accepted).
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.connect_seconds
        while True:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
                break
            except OSError:
                if loop.time() > give_up:
                    writer.close()
                    return
                await asyncio.sleep(0.1)
        await asyncio.gather(
            self._pump(reader, up_writer, upstream=True),
            self._pump(up_reader, writer, upstream=False),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        """Read as fast as the sender sends; write each chunk ``delay`` after it arrived."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def feed() -> None:
            try:
                while data := await reader.read(CHUNK):
                    queue.put_nowait((loop.time() + self.delay, data))
            finally:
                queue.put_nowait((loop.time() + self.delay, b""))

        feeder = asyncio.create_task(feed())
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                if upstream:
                    self.upstream += len(data)
                else:
                    self.downstream += len(data)
                await writer.drain()
        finally:
            feeder.cancel()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def relay_main(args: argparse.Namespace) -> None:
    """The relay as a process: runs until SIGTERM, then prints its byte counts as JSON."""

    async def run() -> None:
        relay = DelayRelay(
            [_address(a) for a in args.listen.split(",")],
            _address(args.to),
            args.delay_ms / 1000.0,
        )
        await relay.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("listening", flush=True)
        await stop.wait()
        await relay.close()
        print(json.dumps({"upstream": relay.upstream, "downstream": relay.downstream}), flush=True)

    asyncio.run(run())


# -- the namespaces --------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _tc(ns: str, dev: str, rate: str) -> None:
    # burst: enough for the rate at a 250 Hz timer (rate/250), at least 64 KiB; latency bounds
    # the queue (a longer queue only adds delay that the relay does not account for)
    argv = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf"]
    argv += ["rate", rate, "burst", "4mb", "latency", "50ms"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def wan_problem() -> str | None:
    """Why the WAN cannot be built here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command (iproute2)"
    return None


@dataclass(frozen=True)
class Wan:
    tag: str
    rate: str

    @property
    def namespaces(self) -> dict[str, str]:
        return {role: f"da{self.tag}-{role}" for role in ("mo", "do", "dl", "wan")}

    def ns(self, role: str) -> str:
        return self.namespaces[role]


def _delete(wan: Wan) -> None:
    for name in wan.namespaces.values():
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@contextlib.contextmanager
def wan_network(rate: str = "1gbit") -> Iterator[Wan]:
    """Make the four namespaces and their rate-limited links; delete them on leaving, whatever
    happens (SIGTERM is turned into an exception for the duration, so that it cleans up too)."""
    problem = wan_problem()
    if problem is not None:
        raise RuntimeError(f"the WAN mode cannot run here: {problem}")
    wan = Wan(secrets.token_hex(2), rate)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        for name in wan.namespaces.values():
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        for i, (role, host, hub) in enumerate(((("mo", MO, WAN_MO)), ("do", DO, WAN_DO),
                                                ("dl", DL, WAN_DL)), start=1):  # fmt: skip
            dev, peer = f"da{wan.tag}{role}", f"da{wan.tag}w{i}"
            _ip("link", "add", dev, "netns", wan.ns(role), "type", "veth",
                "peer", "name", peer, "netns", wan.ns("wan"))  # fmt: skip
            _ip("-n", wan.ns(role), "addr", "add", f"{host}/30", "dev", dev)
            _ip("-n", wan.ns("wan"), "addr", "add", f"{hub}/30", "dev", peer)
            _ip("-n", wan.ns(role), "link", "set", dev, "up")
            _ip("-n", wan.ns("wan"), "link", "set", peer, "up")
            _tc(wan.ns(role), dev, rate)
            _tc(wan.ns("wan"), peer, rate)
            # the direct mode's route: the other hosts through the hub (which forwards)
            _ip("-n", wan.ns(role), "route", "add", "198.19.0.0/16", "via", hub)
        subprocess.run(
            ["ip", "netns", "exec", wan.ns("wan"), "sh", "-c",
             "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            check=True,
            timeout=30,
        )  # fmt: skip
        yield wan
    finally:
        _delete(wan)
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def relay(wan: Wan, port: int, rtt_ms: float | None) -> Iterator[subprocess.Popen[str] | None]:
    """The relay, in the "wan" namespace, from both peers' links to the model owner's port
    (``rtt_ms`` None: no relay, the peers reach the model owner through the hub's forwarding)."""
    if rtt_ms is None:
        yield None
        return
    argv = ["ip", "netns", "exec", wan.ns("wan"), sys.executable, str(Path(__file__).resolve())]
    argv += ["relay", "--listen", f"{WAN_DO}:{port},{WAN_DL}:{port}", "--to", f"{MO}:{port}"]
    argv += ["--delay-ms", str(rtt_ms / 2.0)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "listening":
            raise RuntimeError(f"the relay did not start: {line!r}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_listening(ns: str, host: str, port: int, party: Any, seconds: float) -> None:
    """Wait until a TCP socket listens on host:port in namespace ``ns`` (read from ``ss``, which
    does not connect: a stray connection to the rendezvous would abort the session)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if party.process.poll() is not None:
            raise RuntimeError(f"the {party.role} worker exited: {party.log_tail()}")
        listed = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"src {host}:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if listed.stdout.strip():
            return
        time.sleep(0.2)
    raise RuntimeError(f"the {party.role} worker did not listen on {host}:{port} in {seconds} s")


def run_over_wan(
    wan: Wan,
    *,
    rtt_ms: float | None,
    method: str,
    train: Path,
    test: Path,
    candidate: Path,
    timeout: float = 120.0,
    deadline: float = 3600.0,
    **job_params: Any,
) -> dict[str, Any]:
    """One appraisal with each party's real worker in its namespace; what the parties and the
    relay report, and the wall time (worker start-up to the last exit). ``job_params`` go to the
    job (e.g. chunk_rows, softmax_chunks). ``rtt_ms`` None: the
    "direct" baseline, the same namespaces and rate limits without the relay (the kernel forwards
    in the hub), which separates the relay's own cost from the RTT's."""
    from common.errors import MPCRunError
    from common.protocol import SessionKeys
    from common.runtime.config import CONFIG_ENV
    from common.runtime.local import build_job, candidate_names, load_inputs
    from common.runtime.supervisor import (
        Party,
        party_config,
        private_workdir,
        stop_parties,
        supervise,
    )

    inputs = load_inputs(train, test, [candidate])
    job = build_job(inputs, candidate_names([candidate]), method=method, **job_params)
    keys = SessionKeys.new()
    session = "wan-" + secrets.token_hex(8)
    port = 29500
    direct = rtt_ms is None
    where = {"model_owner": (wan.ns("mo"), MO)}
    where["data_owner"] = (wan.ns("do"), MO if direct else WAN_DO)
    where["dealer"] = (wan.ns("dl"), MO if direct else WAN_DL)
    role_inputs: dict[str, dict[str, Any]] = {
        "model_owner": {"train": str(train), "test": str(test)},
        "data_owner": {"candidates": [str(candidate)]},
        "dealer": {},
    }
    start = time.perf_counter()
    with private_workdir() as work, contextlib.ExitStack() as stack:
        parties: list[Party] = []

        def launch(role: str) -> Party:
            ns, host = where[role]
            config = party_config(
                role,
                job=job,
                rendezvous=f"tcp://{host}:{port}",
                workdir=work,
                timeout=timeout,
                session_id=session,
                keys=keys.for_role(role, job.provider),
                **role_inputs[role],
            )
            path = work / f"{role}.json"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(config.model_dump_json())
            party = Party(config, path, work / f"{role}.log")
            party.log_file = open(party.log_path, "wb")  # noqa: SIM115 - stop_parties closes
            party.process = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", WORKER],
                env={**os.environ, CONFIG_ENV: str(path), "PYTHONPATH": str(ROOT)},
                stdin=subprocess.DEVNULL,
                stdout=party.log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(work),
            )
            parties.append(party)
            return party

        try:
            # The relay accepts at once, so a peer's handshake clock would start before the model
            # owner's worker listens (a real network refuses, and the peer retries): start the
            # model owner first, and the relay and the peers once its port is listening.
            mo = launch("model_owner")
            wait_listening(wan.ns("mo"), MO, port, mo, timeout)
            relay_proc = stack.enter_context(relay(wan, port, rtt_ms))
            launch("data_owner")
            launch("dealer")
            report = asyncio.run(
                supervise(parties, rendezvous_seconds=timeout, compute_seconds=deadline)
            )
        finally:
            stop_parties(parties)
        wall = time.perf_counter() - start
        if report.outcome != "completed":
            raise MPCRunError(
                f"WAN run ({method}, RTT {rtt_ms} ms): {report.reason}", report.report
            )
        counts = {"upstream": 0, "downstream": 0}
        if relay_proc is not None:
            relay_proc.send_signal(signal.SIGTERM)
            out, _ = relay_proc.communicate(timeout=10)
            counts = json.loads(out.strip().splitlines()[-1])
    (mine,) = report.results["model_owner"]["results"]
    (theirs,) = report.results["data_owner"]["results"]
    return {
        "method": method,
        "rtt_ms": rtt_ms,
        "rate": wan.rate,
        "score": mine["score"],
        "mpc_seconds": mine["seconds"],
        "wall_seconds": wall,
        "rounds": mine["rounds"],
        "bytes_between_owners": theirs["bytes_sent"] + theirs["bytes_received"],
        "rss_mo_mb": mine["peak_rss_mb"],
        "rss_do_mb": theirs["peak_rss_mb"],
        "relay_bytes": counts["upstream"] + counts["downstream"] if not direct else None,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("relay", help="run the delaying relay until SIGTERM")
    r.add_argument("--listen", required=True, help="H:P[,H:P...]")
    r.add_argument("--to", required=True, help="H:P")
    r.add_argument("--delay-ms", type=float, required=True, help="each direction's delay")
    args = parser.parse_args(argv)
    relay_main(args)


if __name__ == "__main__":
    main()
