"""Start and supervise MPC party processes (model owner, data owner, dealer).

Modelled on torch.distributed.elastic's supervision: each party is its own process (a fresh
interpreter, ``start_new_session=True`` so a signal reaches its whole process group), configured
through a JSON file named in its environment. The supervisor enforces one deadline for the whole
run; if any party fails or the deadline passes, every other party gets SIGTERM, then SIGKILL after a
grace period, and is reaped (no zombies). A party's uncaught exception arrives as a JSON error file
and is re-raised here as :class:`MPCError` naming the party, with every party's traceback attached.
"""

from __future__ import annotations

import contextlib
import json
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

GRACE_SECONDS = 5.0


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

    def progress(self) -> tuple[int, int] | None:
        """(done, total) from the worker's last progress line; None before it joined the run."""
        try:
            lines = Path(self.config.progress_file).read_text().splitlines()
        except OSError:
            return None
        if not lines:
            return None
        last = json.loads(lines[-1])
        return int(last["done"]), int(last["total"])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_party(config: PartyConfig, workdir: Path) -> Party:
    """Write the party's configuration (mode 0600) and start its worker process.

    The worker runs in a new process session (so that one signal reaches its whole group) with the
    configuration's path in its environment: nothing secret appears on its command line.
    """
    config_path = workdir / f"{config.role}.json"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config.model_dump_json())
    party = Party(config, config_path, workdir / f"{config.role}.log")
    env = dict(os.environ)
    env[CONFIG_ENV] = str(config_path)
    env.setdefault("OMP_NUM_THREADS", "1")
    party.log_file = open(party.log_path, "wb")  # noqa: SIM115 - closed in stop_parties
    party.process = subprocess.Popen(
        [sys.executable, "-m", "common.worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=party.log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
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
                if progress is not None and progress != reported:
                    reported = progress
                    on_progress(*progress)
            failed = [role for role, code in codes.items() if code not in (None, 0)]
            if failed:
                # give the others a moment to write their own error reports, then stop them
                time.sleep(0.5)
                stop_parties(parties)
                first = next(p for p in parties if p.role == failed[0])
                err = first.error()
                what = f"{err['type']}: {err['message']}" if err else "exited without a report"
                raise MPCRunError(f"the {failed[0]} party failed: {what}", _failure_report(parties))
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
