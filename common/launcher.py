"""Start and supervise MPC party processes (model owner, data owner, dealer).

Modelled on torch.distributed.elastic's supervision: each party is its own process, in a new process
session (so that a signal reaches its whole process group), configured through a JSON file whose
path it is handed (never a secret on a command line).

Workers are forked from a *fork server* (:mod:`multiprocessing`'s ``forkserver``): a clean
interpreter started once per supervising process, which imports torch, CrypTen and the MPC kernel
and then only forks. Importing those costs about 2 s of CPU; a fork from the preloaded server costs
milliseconds. The server never runs service code, holds no secret and has one thread, so forking it
has none of the hazards of forking a web process; each child re-seeds every generator it inherited.
``DATA_APPRAISAL_WORKER_START=spawn`` starts each worker as a fresh ``python -m common.worker``
instead (slower; for debugging). The supervisor enforces one deadline for the whole
run; if any party fails or the deadline passes, every other party gets SIGTERM, then SIGKILL after a
grace period, and is reaped (no zombies). A party's uncaught exception arrives as a JSON error file
and is re-raised here as :class:`MPCError` naming the party, with every party's traceback attached.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import MPCRunError, PeerTimeout
from common.worker import CONFIG_ENV, JobSpec, PartyConfig

ROOT = Path(__file__).resolve().parent.parent  # the checkout, for a worker started by spawn

GRACE_SECONDS = 5.0
START_ENV = "DATA_APPRAISAL_WORKER_START"  # "forkserver" (default) or "spawn"
PRELOAD = ["common.worker_preload"]  # what the fork server imports once


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


@dataclass(frozen=True)
class WorkerProgress:
    """A worker's progress file, read: how many candidates there are, how many entered the MPC
    (each of those may have revealed its value), and the results of those that finished."""

    total: int
    started: int
    results: tuple[dict[str, Any], ...] = ()

    @property
    def done(self) -> int:
        return len(self.results)


def read_progress(path: Path) -> WorkerProgress | None:
    """Parse a progress file (:func:`common.worker._report`); None before the worker joined.

    A line the worker is still writing is ignored until it is complete."""
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError:
        return None
    total: int | None = None
    started = 0
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
        elif kind == "result":
            results.append(dict(event["result"]))
    return None if total is None else WorkerProgress(total, started, tuple(results))


@dataclass
class Party:
    config: PartyConfig
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: Any = field(default=None, repr=False)

    @property
    def role(self) -> str:
        return self.config.role

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
            raise subprocess.TimeoutExpired("common.worker", timeout or 0.0)
        return code


def _forkserver() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _drop_forkserver_alive_fd() -> None:
    """Close the fork server's "alive" pipe that multiprocessing hands every child.

    The fork server exits when every holder of that pipe's write end has closed it; a worker that
    kept its copy would keep the server alive after the supervising service died, and the
    worker's parent watchdog (:func:`common.worker._exit_with_parent`, which waits for the fork
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
    its log, forget the randomness it inherited, then run :func:`common.worker.main`."""
    os.setsid()
    _drop_forkserver_alive_fd()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(workdir)
    os.environ[CONFIG_ENV] = config_path
    from common import worker

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
        env = dict(os.environ)
        env[CONFIG_ENV] = str(config_path)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        party.log_file = open(party.log_path, "wb")  # noqa: SIM115 - closed in stop_parties
        party.process = subprocess.Popen(
            [sys.executable, "-m", "common.worker"],
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
    party.process = _ForkedWorker(process)  # type: ignore[assignment]
    return party


def stop_parties(parties: list[Party]) -> None:
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


def _failure_report(parties: list[Party]) -> str:
    blocks = []
    for p in parties:
        err = p.error()
        code = None if p.process is None else p.process.returncode
        if err is not None:
            blocks.append(f"--- {p.role} (exit {code}): {err['type']}\n{err['traceback']}")
        elif code not in (0, None):
            blocks.append(f"--- {p.role} (exit {code}), log tail:\n{p.log_tail()}")
    return "\n".join(blocks)


def run_parties(
    configs: list[PartyConfig],
    *,
    workdir: Path,
    deadline_seconds: float,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run every party to completion; return each role's result payload.

    Raises :class:`MPCRunError` (with every party's traceback) when a party fails, and
    :class:`PeerTimeout` when the run outlives ``deadline_seconds``. Every process is gone when this
    returns or raises.
    """
    parties: list[Party] = []
    reported: tuple[int, int] | None = None
    try:
        for config in configs:
            parties.append(start_party(config, workdir))
        end = time.monotonic() + deadline_seconds
        while True:
            codes = {p.role: p.process.poll() for p in parties if p.process is not None}
            if on_progress is not None:
                progress = parties[0].progress()  # the first party's (the model owner's)
                if progress is not None and (progress.done, progress.total) != reported:
                    reported = progress.done, progress.total
                    on_progress(*reported)
            failed = [role for role, code in codes.items() if code not in (None, 0)]
            if failed:
                # give the others a moment to write their own error reports, then stop them
                time.sleep(0.5)
                stop_parties(parties)
                first = next(p for p in parties if p.role == failed[0])
                raise MPCRunError(
                    f"the {failed[0]} party failed: {first.failure()}", _failure_report(parties)
                )
            if all(code == 0 for code in codes.values()):
                break
            if time.monotonic() > end:
                stop_parties(parties)
                raise PeerTimeout(
                    f"the MPC run did not finish within {deadline_seconds:.0f} s "
                    f"(still running: {', '.join(r for r, c in codes.items() if c is None)})"
                )
            time.sleep(0.05)
        return {p.role: p.result() for p in parties}
    finally:
        stop_parties(parties)


@contextlib.contextmanager
def private_workdir() -> Iterator[Path]:
    """A private (0700) temporary directory for configs, results and logs; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="data-appraisal-") as d:
        os.chmod(d, 0o700)
        yield Path(d)
