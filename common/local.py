"""Run a complete two-party appraisal on this machine: three processes on loopback.

The model owner's and the data owner's workers each load only their own files; the dealer loads
nothing. This module only validates the files up front (so that a bad input fails before any MPC
starts), writes the three party configurations and merges what the parties report.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from common.data import Dataset, load_dataset
from common.errors import ConfigError, MPCError
from common.launcher import free_port, party_config, private_workdir, run_parties
from common.model import feature_bound, prepare_model_owner, v_bound
from common.schemas import outcome_json
from common.worker import CandidateMeta, JobSpec, PartyConfig, SessionKeys

Method = Literal["influence", "gradient-norm", "finetune"]


@dataclass(frozen=True)
class CandidateResult:
    candidate: str
    method: str
    score: float | None
    accept: bool | None
    seconds: float
    bytes: int  # bytes the two parties wrote to their sockets for this candidate (measured)
    rounds: int  # communication rounds of the model owner's party, as counted by CrypTen
    peak_rss_mb: float  # the larger of the two parties' peak resident memory
    dealer_bytes: int = 0  # bytes the dealer wrote during the whole run (all candidates)
    plaintext: float | None = None  # --check: the plaintext twin's score

    def to_json(self) -> dict[str, Any]:
        out = outcome_json(self)
        if self.plaintext is not None:
            out["plaintext"] = self.plaintext
            if self.score is not None:
                out["abs_diff"] = abs(self.score - self.plaintext)
        return out


def _label(path: str | Path, every: Sequence[str | Path]) -> str:
    """A candidate's name in results: its file name, or the path as given if names collide."""
    names = [Path(p).name for p in every]
    return Path(path).name if names.count(Path(path).name) == 1 else str(path)


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def load_inputs(
    train: str | Path,
    test: str | Path,
    candidates: Sequence[str | Path],
    *,
    label_column: str | None = None,
) -> tuple[Dataset, Dataset, list[Dataset], int, int]:
    """Load and cross-validate every file; return them with the agreed feature and class counts."""
    if not candidates:
        raise ConfigError("give at least one --candidate file")
    train_ds = load_dataset(train, label_column=label_column)
    n_features = train_ds.n_features
    test_ds = load_dataset(test, label_column=label_column, n_features=n_features)
    n_classes = int(max(train_ds.y.max(), test_ds.y.max())) + 1
    cands = [
        load_dataset(c, label_column=label_column, n_features=n_features, n_classes=n_classes)
        for c in candidates
    ]
    return train_ds, test_ds, cands, n_features, n_classes


def appraise_local(
    *,
    method: Method,
    train: str | Path,
    test: str | Path,
    candidates: Sequence[str | Path],
    l2: float = 1.0,
    steps: int = 16,
    lr: float = 0.1,
    batch_size: int | None = None,
    reveal: Literal["score", "threshold"] = "score",
    threshold: float | None = None,
    direction: Literal["lower", "higher"] | None = None,
    insecure_tfp: bool = False,
    insecure_transport: bool = False,
    reveal_to: Literal["both", "model_owner"] = "both",
    noise_epsilon: float | None = None,
    check: bool = False,
    label_column: str | None = None,
    timeout: float = 120.0,
    deadline: float = 3600.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[CandidateResult]:
    """Appraise each candidate under two-party MPC; optionally compute the plaintext twin too."""
    if reveal == "threshold" and threshold is None:
        raise ConfigError("--reveal threshold needs --threshold τ")
    if reveal == "score" and threshold is not None:
        raise ConfigError("--threshold is only used with --reveal threshold")
    for name, value in (("--l2", l2), ("--lr", lr)):
        if not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
    # resolved here, against the caller's directory: the workers run in a directory of their own
    names = [_label(c, candidates) for c in candidates]
    train, test = _absolute(train), _absolute(test)
    candidates = [_absolute(c) for c in candidates]
    train_ds, test_ds, cand_ds, n_features, n_classes = load_inputs(
        train, test, candidates, label_column=label_column
    )
    bound = None
    if noise_epsilon is not None:  # the model owner's public bound on v, computed as it would
        state = prepare_model_owner(
            train_ds.X, train_ds.y, test_ds.X, test_ds.y, n_classes=n_classes, l2=l2
        )
        bound = v_bound(state.v)
    try:
        job = JobSpec(
            method=method,
            n_features=n_features,
            n_classes=n_classes,
            candidates=[
                CandidateMeta(name=name, n_samples=ds.n_samples)
                for name, ds in zip(names, cand_ds, strict=True)
            ],
            n_train=train_ds.n_samples,
            n_test=test_ds.n_samples,
            feature_bound=feature_bound(train_ds.X, test_ds.X, *(c.X for c in cand_ds)),
            l2=l2,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            reveal=reveal,
            direction=direction,
            provider="TFP" if insecure_tfp else "TTP",
            reveal_to=reveal_to,
            noise_epsilon=noise_epsilon,
            v_bound=bound,
            transport="gloo" if insecure_transport else "secure",
        )
    except ValidationError as exc:
        raise ConfigError(
            f"invalid parameters: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from None
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    keys = SessionKeys.new()
    session_id = "local-" + secrets.token_hex(8)
    with private_workdir() as work:

        def party(role: str, **inputs: Any) -> PartyConfig:
            return party_config(
                role,
                job=job,
                rendezvous=rendezvous,
                workdir=work,
                timeout=timeout,
                session_id=session_id,
                keys=keys.for_role(role),
                allow_insecure_tfp=insecure_tfp,
                **inputs,
            )

        configs = [
            party(
                "model_owner",
                train=str(train),
                test=str(test),
                threshold=threshold,
                label_column=label_column,
            ),
            party("data_owner", candidates=[str(c) for c in candidates], label_column=label_column),
        ]
        if not insecure_tfp:
            configs.append(party("dealer"))
        reports = run_parties(
            configs, workdir=work, deadline_seconds=deadline, on_progress=on_progress
        )

    mo_results = reports["model_owner"]["results"]
    do_results = reports["data_owner"]["results"]
    plain = (
        _plaintext_scores(method, train_ds, test_ds, cand_ds, l2, steps, lr, batch_size)
        if check
        else None
    )
    out = []
    for i, (a, b) in enumerate(zip(mo_results, do_results, strict=True)):
        if reveal_to == "both" and (a["score"], a["accept"]) != (b["score"], b["accept"]):
            raise MPCError(f"the parties disagree on candidate {a['candidate']}: {a} vs {b}")
        out.append(
            CandidateResult(
                candidate=a["candidate"],
                method=method,
                score=a["score"],
                accept=a["accept"],
                seconds=max(a["seconds"], b["seconds"]),
                bytes=int(a["bytes_written"]) + int(b["bytes_written"]),
                rounds=int(a["rounds"]),
                peak_rss_mb=max(float(a["peak_rss_mb"]), float(b["peak_rss_mb"])),
                dealer_bytes=int(reports.get("dealer", {}).get("bytes_written", 0)),
                plaintext=None if plain is None else plain[i],
            )
        )
    return out


def plaintext_scores(
    *,
    method: Method,
    train: str | Path,
    test: str | Path,
    candidates: Sequence[str | Path],
    l2: float = 1.0,
    steps: int = 16,
    lr: float = 0.1,
    batch_size: int | None = None,
    label_column: str | None = None,
) -> list[float]:
    """The plaintext twin of :func:`appraise_local`'s scores, computed in this process."""
    train_ds, test_ds, cand_ds, _, _ = load_inputs(
        train, test, candidates, label_column=label_column
    )
    return _plaintext_scores(method, train_ds, test_ds, cand_ds, l2, steps, lr, batch_size)


def _plaintext_scores(
    method: str,
    train: Dataset,
    test: Dataset,
    cands: list[Dataset],
    l2: float,
    steps: int,
    lr: float,
    batch_size: int | None,
) -> list[float]:
    """The plaintext twin of each candidate's score (what --check compares against)."""
    from common import model

    n_classes = int(max(train.y.max(), test.y.max())) + 1
    state = model.prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=n_classes, l2=l2)
    scores = []
    for c in cands:
        if method == "influence":
            scores.append(model.influence_score(state, c.X, c.y))
        elif method == "gradient-norm":
            scores.append(model.gradient_norm_score(state.theta, c.X, c.y))
        else:
            scores.append(
                model.finetune_score(
                    state,
                    train.X,
                    train.y,
                    c.X,
                    c.y,
                    test.X,
                    test.y,
                    steps=steps,
                    lr=lr,
                    batch_size=batch_size,
                )
            )
    return scores
