"""Start and supervise MPC party processes: the one supervisor of the services and of ``local``.

Modelled on torch.distributed.elastic's supervision: each party is its own process, in a new process
session (so that a signal reaches its whole process group), configured through a JSON file whose
path it is handed (never a secret on a command line). :func:`supervise` follows a group of parties
(one for a service, all three for ``local``) under two deadlines, the rendezvous and the
computation; when any party fails, a deadline passes or the caller cancels, every party gets
SIGTERM, then SIGKILL after a grace period, and is reaped (no zombies). A party's uncaught exception
arrives as a JSON error file and ends up in the :class:`RunReport`, with every party's traceback.

Workers are forked from a *fork server* (:mod:`multiprocessing`'s ``forkserver``): a clean
interpreter started once per supervising process, which imports torch, CrypTen and the MPC kernel
and then only forks. Importing those costs about 2 s of CPU; a fork from the preloaded server costs
milliseconds. The server never runs service code, holds no secret and has one thread, so forking it
has none of the hazards of forking a web process; each child re-seeds every generator it inherited.
``DATA_APPRAISAL_WORKER_START=spawn`` starts each worker as a fresh
``python -m common.runtime.worker`` instead (slower; for debugging).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.protocol import JobSpec
from common.runtime.config import CONFIG_ENV, WORKER_ENV, PartyConfig

ROOT = Path(__file__).resolve().parents[2]  # the checkout, for a worker started by spawn
GRACE_SECONDS = 5.0
JOIN_SLACK_SECONDS = 10.0  # the workers enforce the rendezvous deadline; the supervisor allows more
START_ENV = "DATA_APPRAISAL_WORKER_START"  # "forkserver" (default) or "spawn"
# what the fork server imports once, in order: the allocator's settings before torch
PRELOAD = ["common.runtime.allocator", "common.runtime.preload"]
POLL_SECONDS = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the rendezvous binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def party_config(
    role: str, *, job: JobSpec, rendezvous: str, workdir: Path, timeout: float, **inputs: Any
) -> PartyConfig:
    """A party's configuration, with its result, error and progress files inside ``workdir``."""
    return PartyConfig(
        role=role,  # type: ignore[arg-type]
        rendezvous=rendezvous,
        job=job,
        timeout_seconds=timeout,
        result_file=str(workdir / f"{role}.result.json"),
        error_file=str(workdir / f"{role}.error.json"),
        progress_file=str(workdir / f"{role}.progress.jsonl"),
        **inputs,
    )


def session_configs(
    job: JobSpec,
    workdir: Path,
    inputs: dict[str, dict[str, Any]],
    *,
    timeout: float,
    session_id: str,
    **options: Any,
) -> dict[str, PartyConfig]:
    """Every party's configuration of one session on this machine: fresh session keys, each role
    given its links' keys only, and a free loopback rendezvous port. ``inputs`` maps each role to
    its inputs (``train``, ``candidates``, ...); ``options`` go to every party."""
    from common.protocol import SessionKeys

    keys = SessionKeys.new()
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    return {
        role: party_config(
            role,
            job=job,
            rendezvous=rendezvous,
            workdir=workdir,
            timeout=timeout,
            session_id=session_id,
            keys=keys.for_role(role, job.provider),
            **options,
            **role_inputs,
        )
        for role, role_inputs in inputs.items()
    }


@dataclass(frozen=True)
class WorkerProgress:
    """A worker's progress file, read: how many candidates there are, how many entered the MPC
    (each of those may have revealed its value), and the results of those that finished."""

    total: int
    started: int
    results: tuple[dict[str, Any], ...] = ()
    step: int = 0
    """Steps done within the candidate under way (its ``step`` events; 0 for a method without
    steps, or before the first)."""
    steps: int = 0
    """Steps the candidate under way takes in all (0: the method reports none)."""

    @property
    def done(self) -> int:
        return len(self.results)


def is_ready(path: Path) -> bool:
    """Whether the worker has loaded and validated its inputs (its ``ready`` event)."""
    try:
        return '"event": "ready"' in path.read_text()
    except OSError:
        return False


def read_progress(path: Path) -> WorkerProgress | None:
    """Parse a progress file (``common.runtime.worker._report``); None before the worker joined.

    A line the worker is still writing is ignored until it is complete."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError:
        return None
    total: int | None = None
    started = step = steps = 0
    results: list[dict[str, Any]] = []
    for line in lines:
        if not line.endswith("\n"):
            break
        event = json.loads(line)
        kind = event.get("event")
        if kind == "joined":
            total = int(event["total"])
        elif kind == "started":
            started = max(started, int(event["index"]) + 1)
            step = steps = 0
        elif kind == "step" and int(event["index"]) == started - 1:
            step, steps = int(event["done"]), int(event["total"])
        elif kind == "result":
            results.append(dict(event["result"]))
            step = steps = 0
    if total is None:
        return None
    return WorkerProgress(total, started, tuple(results), step, steps)


class _ForkedWorker:
    """A fork-server child with the part of :class:`subprocess.Popen`'s interface we use."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid = int(process.pid or 0)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        code = self._process.exitcode
        if code is None:
            raise subprocess.TimeoutExpired("common.runtime.worker", timeout or 0.0)
        return code


@dataclass
class Party:
    config: PartyConfig
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | _ForkedWorker | None = None
    log_file: Any = field(default=None, repr=False)

    @property
    def role(self) -> str:
        return self.config.role

    @property
    def name(self) -> str:
        """The party's key in a run's reports: its role, with its shard's number past shard 0."""
        shard = self.config.shard
        return self.role if shard == 0 else f"{self.role}@{shard}"

    @property
    def label(self) -> str:
        """How messages name the party: ``data owner``, or ``data owner (shard 1)`` with shards."""
        return self.role.replace("_", " ") + self.config.part.label

    def error(self) -> dict[str, Any] | None:
        path = Path(self.config.error_file)
        if path.exists():
            return dict(json.loads(path.read_text()))
        return None

    def result(self) -> dict[str, Any]:
        return dict(json.loads(Path(self.config.result_file).read_text()))

    def progress(self) -> WorkerProgress | None:
        """What the worker has reported so far; None before it joined the run."""
        return read_progress(Path(self.config.progress_file))

    def ready(self) -> bool:
        return is_ready(Path(self.config.progress_file))

    def failure(self) -> str:
        """Why this (ended) worker failed, in one line: its error report, else its last words."""
        code = None if self.process is None else self.process.returncode
        err = self.error()
        if err is not None:
            return f"{err['type']}: {err['message']}"
        said = self.log_tail(lines=1).strip()
        return f"exited with status {code}" + (f": {said}" if said else " without a word")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _forkserver() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _drop_forkserver_alive_fd() -> None:
    """Close the fork server's "alive" pipe that multiprocessing hands every child.

    The fork server exits when every holder of that pipe's write end has closed it; a worker that
    kept its copy would keep the server alive after the supervising service died, and the
    worker's parent watchdog (``common.runtime.worker._exit_with_parent``, which waits for the fork
    server to go) would never fire.
    """
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        with contextlib.suppress(OSError):
            os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def _worker_child(config_path: str, log_path: str, workdir: str) -> None:
    """The first code a forked worker runs: become its own process session, send its output to
    its log, forget the randomness it inherited, then run :func:`common.runtime.worker.main`."""
    os.setsid()
    _drop_forkserver_alive_fd()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(workdir)
    os.environ[CONFIG_ENV] = config_path
    from common.runtime import worker

    code = 1
    try:
        worker.reseed_inherited_generators()
        code = worker.main()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start_party(config: PartyConfig, workdir: Path) -> Party:
    """Write the party's configuration (mode 0600) and start its worker process.

    The worker runs in a new process session (so that one signal reaches its whole group) with
    its working directory ``workdir``; it is handed only the configuration's path, so nothing
    secret appears on its command line or in its environment.
    """
    config_path = workdir / f"{config.role}.json"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config.model_dump_json())
    party = Party(config, config_path, workdir / f"{config.role}.log")
    if os.environ.get(START_ENV, "forkserver") == "spawn":
        env = {**WORKER_ENV, **os.environ}
        env[CONFIG_ENV] = str(config_path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        party.log_file = open(party.log_path, "wb")  # noqa: SIM115 - closed in stop_parties
        party.process = subprocess.Popen(
            [sys.executable, "-m", "common.runtime.worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=party.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(workdir),
        )
        return party
    process = _forkserver().Process(
        target=_worker_child,
        args=(str(config_path), str(party.log_path), str(workdir)),
        name=f"data-appraisal {config.role}",
        daemon=False,
    )
    process.start()
    party.process = _ForkedWorker(process)
    return party


def stop_parties(parties: Sequence[Party]) -> None:
    """SIGTERM every live party's process group, SIGKILL after the grace period, reap all."""
    live = [p for p in parties if p.process is not None and p.process.poll() is None]
    for p in live:
        assert p.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in live:
        assert p.process is not None
        try:
            p.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.process.pid, signal.SIGKILL)
            p.process.wait()
    for p in parties:
        if p.process is not None:
            # the worker's own children (if any) share its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.process.pid, signal.SIGKILL)
        if p.log_file is not None:
            p.log_file.close()
            p.log_file = None


def failure_report(parties: Sequence[Party]) -> str:
    """Every failed party's traceback (or log tail), for a debug report."""
    blocks = []
    for p in parties:
        err = p.error()
        code = None if p.process is None else p.process.returncode
        if err is not None:
            blocks.append(f"--- {p.name} (exit {code}): {err['type']}\n{err['traceback']}")
        elif code not in (0, None):
            blocks.append(f"--- {p.name} (exit {code}), log tail:\n{p.log_tail()}")
    return "\n".join(blocks)


Outcome = Literal["completed", "failed", "expired", "cancelled"]


@dataclass(frozen=True)
class RunReport:
    """How a supervised run ended."""

    outcome: Outcome
    reason: str  # why it did not complete ("" if it did)
    results: dict[str, dict[str, Any]]  # each completed party's result payload, by name
    progress: dict[str, WorkerProgress]  # each party's last progress, by name (Party.name)
    report: str = ""  # every failed party's traceback

    @property
    def joined(self) -> bool:
        return bool(self.progress)


@dataclass
class Cancel:
    """Set by the caller to stop a run: its outcome and reason then stand."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    outcome: Outcome = "cancelled"
    reason: str = ""
    stopping: bool = (
        False  # a stop is under way: a worker that breaks meanwhile broke because of it
    )

    def set(self, outcome: Outcome, reason: str) -> None:
        self.outcome, self.reason = outcome, reason
        self.event.set()


async def supervise(
    parties: Sequence[Party],
    *,
    rendezvous_seconds: float,
    compute_seconds: float,
    cancel: Cancel | None = None,
    on_progress: Callable[[str, WorkerProgress], None] | None = None,
) -> RunReport:
    """Follow started parties to their end; stop every one of them before returning.

    Each party must load and validate its inputs (its ``ready`` event) within ``compute_seconds``;
    the rendezvous clock starts once every party is ready: all must have joined within
    ``rendezvous_seconds`` of that (plus a slack: the workers enforce that deadline themselves),
    and all must finish within ``compute_seconds`` after the last one joined. ``on_progress(role,
    progress)`` is called whenever a party's progress changes (``role`` is the party's
    :attr:`Party.name`: its role, unless it is a shard past the first). A party that fails with a
    timeout before every party joined makes the run ``expired``.
    """
    started = time.monotonic()
    ready_at: dict[str, float] = {}
    join_by: float | None = None
    finish_by: float | None = None
    seen: dict[str, WorkerProgress] = {}

    def report(outcome: Outcome, reason: str) -> RunReport:
        results = {}
        for p in parties:
            if p.process is not None and p.process.poll() == 0:
                with contextlib.suppress(OSError, ValueError):
                    results[p.name] = p.result()
        return RunReport(outcome, reason, results, dict(seen), failure_report(parties))

    try:
        while True:
            for p in parties:
                if p.name not in ready_at and p.ready():
                    ready_at[p.name] = time.monotonic()
                progress = p.progress()
                if progress is not None and progress != seen.get(p.name):
                    seen[p.name] = progress
                    if on_progress is not None:
                        on_progress(p.name, progress)
            if join_by is None and len(ready_at) == len(parties):
                join_by = max(ready_at.values()) + rendezvous_seconds + JOIN_SLACK_SECONDS
            if finish_by is None and len(seen) == len(parties):
                finish_by = time.monotonic() + compute_seconds
            codes = {p.name: None if p.process is None else p.process.poll() for p in parties}
            failed = [p for p in parties if codes[p.name] not in (None, 0)]
            if failed:
                if cancel is not None and cancel.stopping:
                    return report(cancel.outcome, cancel.reason)
                await asyncio.sleep(0.5)  # let the others write their own reports, then stop them
                first = failed[0]
                err = first.error()
                timed_out = err is not None and err["type"] == "PeerTimeout"
                outcome: Outcome = "expired" if timed_out and finish_by is None else "failed"
                reason = f"the {first.label} worker failed: {first.failure()}"
                if outcome == "expired":
                    reason += rendezvous_hint(first.config)
                return report(outcome, reason)
            if all(code == 0 for code in codes.values()):
                return report("completed", "")
            if cancel is not None and cancel.event.is_set():
                return report(cancel.outcome, cancel.reason)
            now = time.monotonic()
            if join_by is None and now > started + compute_seconds:
                loading = ", ".join(p.label for p in parties if p.name not in ready_at)
                return report(
                    "failed",
                    f"the {loading} worker did not load its inputs within {compute_seconds:g} s",
                )
            if finish_by is None and join_by is not None and now > join_by:
                missing = ", ".join(p.label for p in parties if p.name not in seen)
                return report(
                    "expired",
                    f"the parties did not meet at the rendezvous within {rendezvous_seconds:g} s "
                    f"(not joined: {missing}); check that every worker can reach the model owner's "
                    "rendezvous address",
                )
            if finish_by is not None and now > finish_by:
                return report(
                    "failed",
                    f"the computation did not finish within its deadline of {compute_seconds:g} s",
                )
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await asyncio.to_thread(stop_parties, parties)


def rendezvous_hint(config: PartyConfig) -> str:
    """What to check when a party timed out before every party had joined the rendezvous."""
    from urllib.parse import urlsplit

    parts = urlsplit(config.rendezvous)
    host, where = parts.hostname or "", parts.netloc
    loopback = host == "localhost" or host.startswith("127.") or host == "::1"
    if loopback and config.role == "model_owner":
        return (
            f"; the rendezvous {where} is a loopback address, which workers on other hosts cannot "
            "reach: if they run elsewhere, set MODEL_OWNER_ADVERTISE_HOST to this host's address "
            "on their network (and MODEL_OWNER_RENDEZVOUS_BIND if that address is not local, "
            "behind NAT)"
        )
    if loopback:
        return (
            f"; the model owner advertised the rendezvous {where}, a loopback address: unless it "
            "runs on this host, this worker reached its own host, not the model owner's (the "
            "model owner must set MODEL_OWNER_ADVERTISE_HOST to an address this host can reach)"
        )
    return (
        f"; check that every worker can reach the model owner's rendezvous {where} "
        "(MODEL_OWNER_ADVERTISE_HOST, and MODEL_OWNER_RENDEZVOUS_PORTS open in its firewall)"
    )


@contextlib.contextmanager
def private_workdir() -> Iterator[Path]:
    """A private (0700) temporary directory for configs, results and logs; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="data-appraisal-") as d:
        os.chmod(d, 0o700)
        yield Path(d)
