"""Fine-tuning's spilled candidate chunks leave nothing behind (``da-finetune-*``, ``masked-*``).

Each worker's temporary files go to its session's private workdir (``worker.main`` sets
``tempfile.tempdir``), which the supervisor's caller removes at the end; fine-tuning keeps each
party's chunk tensors (the data owner's X and A, the model owner's E) in a ``da-finetune-``
directory there (``statistics.finetune_statistic``, ``products.Masked._spill``) for the
candidate's computation. This test runs a real three-worker fine-tuning job of three chunks and
looks into the workdir while it runs (the spill must be there: otherwise the test would prove
nothing) and once every worker has exited, before the workdir is removed (nothing may be left:
each party removes its own spill, not the workdir's removal). The killed-peer case is
``test_supervisor.py::test_peer_killed_mid_run_fails_the_run``.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import common.runtime.local
from common.runtime.local import run_local

pytestmark = pytest.mark.mpc

SPILLED = ("da-finetune-", "masked-", "da-dealer-")  # the spill directories' and files' prefixes


def spilled(root: Path) -> list[Path]:
    """Every spill directory or file under ``root``."""
    return sorted(p for p in root.rglob("*") if p.name.startswith(SPILLED))


class Watch:
    """Wraps the local run's private workdir: polls it for spills while the run goes on, and
    lists them when the workers are done, just before the workdir is removed."""

    def __init__(self) -> None:
        self.workdir: Path | None = None
        self.seen: set[str] = set()  # spill files seen while the run went on (names)
        self.left: list[Path] | None = None
        self._stop = threading.Event()

    def _poll(self, work: Path) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError):  # a file removed while listed
                self.seen.update(p.name for p in spilled(work))

    @contextlib.contextmanager
    def workdir_of(self, original) -> Iterator[Path]:  # type: ignore[no-untyped-def]
        with original() as work:
            self.workdir = work
            poller = threading.Thread(target=self._poll, args=(work,), daemon=True)
            poller.start()
            try:
                yield work
            finally:
                self._stop.set()
                poller.join()
                self.left = spilled(work)


def test_a_finetuning_run_leaves_no_spill(digits_split, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run's workdir goes here
    watch = Watch()
    original = common.runtime.local.private_workdir
    monkeypatch.setattr(common.runtime.local, "private_workdir", lambda: watch.workdir_of(original))
    run = run_local(
        method="finetune",
        train=digits_split.train,
        test=digits_split.test,
        candidates=[digits_split.candidates[0]],  # 130 rows: chunks of 50, 50 and 30
        chunk_rows=50,
        steps=2,
        timeout=30,
    )
    assert run.results[0].score is not None
    # the chunks were spilled, inside the workdir: one directory per owner, X (the data owner's:
    # it keeps no A once E is sent) and E per chunk
    assert any(name.startswith("da-finetune-") for name in watch.seen), watch.seen
    assert {name.rsplit("-", 1)[-1] for name in watch.seen if name.startswith("masked-")} == {
        "X.npy",
        "E.npy",
    }
    # every worker removed its own spill before it exited; the workdir itself is gone after
    assert watch.left == [], watch.left
    assert watch.workdir is not None and not watch.workdir.exists()
    assert spilled(tmp_path) == []
