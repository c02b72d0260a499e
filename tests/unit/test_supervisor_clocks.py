"""The supervisor's clocks, with stand-in workers (processes that only sleep) whose progress
events the test writes: loading does not count against the rendezvous, and each deadline names
what it waited for."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from common.protocol import CandidateMeta, JobSpec
from common.runtime import supervisor
from common.runtime.supervisor import Party, party_config, supervise


def _party(tmp: Path, role: str, seconds: float) -> Party:
    config = party_config(
        role,
        job=JobSpec(n_features=1, n_classes=2, candidates=[CandidateMeta(name="c", n_samples=1)]),
        rendezvous="tcp://127.0.0.1:1",
        workdir=tmp,
        timeout=1,
        **({"train": str(tmp / "a"), "test": str(tmp / "b")} if role == "model_owner" else {}),
        **({"candidates": [str(tmp / "c")]} if role == "data_owner" else {}),
    )
    party = Party(config, tmp / f"{role}.json", tmp / f"{role}.log")
    party.process = subprocess.Popen(["sleep", str(seconds)], start_new_session=True)
    return party


def _write(party: Party, at: float, *events: dict[str, object]) -> threading.Thread:
    def write() -> None:
        time.sleep(at)
        with open(party.config.progress_file, "a") as f:
            for event in events:
                f.write(json.dumps(event) + "\n")

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_the_rendezvous_clock_starts_when_every_party_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "JOIN_SLACK_SECONDS", 0.0)
    mo, do = _party(tmp_path, "model_owner", 3.5), _party(tmp_path, "data_owner", 3.5)
    joined = {"event": "joined", "total": 1}
    threads = [
        _write(mo, 0.0, {"event": "ready"}),
        _write(do, 2.0, {"event": "ready"}),  # a slow load: 2 s, twice the rendezvous window
        _write(mo, 2.5, joined),
        _write(do, 2.5, joined),
    ]
    report = asyncio.run(supervise([mo, do], rendezvous_seconds=1.0, compute_seconds=30))
    for t in threads:
        t.join()
    assert report.outcome == "completed", report  # measured from the start it would have expired


def test_a_party_that_never_joins_expires_and_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "JOIN_SLACK_SECONDS", 0.0)
    mo, do = _party(tmp_path, "model_owner", 30), _party(tmp_path, "data_owner", 30)
    threads = [_write(p, 0.0, {"event": "ready"}) for p in (mo, do)]
    threads.append(_write(mo, 0.1, {"event": "joined", "total": 1}))
    start = time.monotonic()
    report = asyncio.run(supervise([mo, do], rendezvous_seconds=1.0, compute_seconds=30))
    for t in threads:
        t.join()
    assert report.outcome == "expired" and "not joined: data owner" in report.reason
    assert time.monotonic() - start < 10  # and both stand-ins were stopped
    assert mo.process is not None and mo.process.poll() is not None


def test_a_party_that_cannot_load_its_inputs_in_time_fails_naming_it(tmp_path: Path) -> None:
    mo, do = _party(tmp_path, "model_owner", 30), _party(tmp_path, "data_owner", 30)
    thread = _write(mo, 0.0, {"event": "ready"})
    report = asyncio.run(supervise([mo, do], rendezvous_seconds=60, compute_seconds=1.0))
    thread.join()
    assert report.outcome == "failed"
    assert "the data owner worker did not load its inputs within 1 s" in report.reason
