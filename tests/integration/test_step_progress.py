"""Progress within a candidate (issue 14): the real workers report each fine-tuning step, and one
step for a one-shot method, in their progress files; the supervisor's reader parses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.protocol import CandidateMeta, JobSpec
from common.runtime.supervisor import private_workdir, read_progress, session_configs
from tests.conftest import supervised

pytestmark = pytest.mark.mpc


def _run(split, method: str, **changes) -> dict[str, list[dict]]:
    from common.ml.data import load_dataset

    cands = [split.candidates[0], split.candidates[1]]
    job = JobSpec(
        method=method,
        n_features=64,
        n_classes=10,
        candidates=[CandidateMeta(name=c.name, n_samples=load_dataset(c).n_samples) for c in cands],
        n_train=100,
        n_test=400,
        **changes,
    )
    inputs = {
        "model_owner": {"train": str(split.train), "test": str(split.test)},
        "data_owner": {"candidates": [str(c) for c in cands]},
        "dealer": {},
    }
    with private_workdir() as work:
        configs = list(session_configs(job, work, inputs, timeout=30, session_id="steps").values())
        report = supervised(configs, work)
        assert report.outcome == "completed", report.reason
        events = {}
        for c in configs[:2]:
            lines = Path(c.progress_file).read_text().splitlines()
            events[c.role] = [json.loads(line) for line in lines]
            progress = read_progress(Path(c.progress_file))
            assert progress is not None and progress.done == 2
    return events


def test_finetune_reports_every_step_of_every_candidate(digits_split) -> None:
    events = _run(digits_split, "finetune", steps=3, lr=1.0)
    for role, lines in events.items():
        steps = [(e["index"], e["done"], e["total"]) for e in lines if e["event"] == "step"]
        assert steps == [(0, 1, 3), (0, 2, 3), (0, 3, 3), (1, 1, 3), (1, 2, 3), (1, 3, 3)], role
        kinds = [e["event"] for e in lines]
        # each candidate's steps come between its "started" and its "result"
        first = kinds.index("started")
        assert kinds[first : first + 5] == ["started", "step", "step", "step", "result"]


def test_a_one_shot_method_reports_one_step(digits_split) -> None:
    events = _run(digits_split, "influence")
    steps = [
        (e["index"], e["done"], e["total"]) for e in events["model_owner"] if e["event"] == "step"
    ]
    assert steps == [(0, 1, 1), (1, 1, 1)]
