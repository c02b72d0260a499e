"""A complete two-party appraisal on this machine: the three parties as processes on loopback.

The model owner's and the data owner's workers each load only their own files; the dealer loads
nothing. :func:`run_local` validates every file up front (so that bad input fails before any MPC
starts), builds the job, starts the three workers under the one supervisor
(:mod:`common.runtime.supervisor`) and returns what the parties report.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from common.errors import ConfigError, MPCError, MPCRunError, PeerTimeout
from common.ml.data import Candidate, Dataset, load_dataset, open_candidate
from common.ml.model import ModelOwnerState, feature_bound, prepare_model_owner, v_bound
from common.ml.twins import streamed_score
from common.mpc.shards import chunk_count, shard_problem
from common.protocol import (
    DEFAULT_CHUNK_ROWS,
    DEFAULT_SOFTMAX_CHUNKS,
    CandidateMeta,
    CandidateResult,
    JobSpec,
    config_error,
)
from common.runtime.config import PartyConfig
from common.runtime.supervisor import (
    private_workdir,
    session_configs,
    start_party,
    supervise,
)
from common.runtime.worker import STREAMED_MAX_BYTES


@dataclass(frozen=True)
class LocalRun:
    """What a local run reports: each owner's results (the model owner's are the ones to show),
    the dealer's traffic, and with ``check`` the plaintext twin of every score."""

    job: JobSpec
    results: list[CandidateResult]  # the model owner's
    data_owner: list[CandidateResult]
    dealer_bytes: int  # bytes the dealer sent during the whole run (all candidates)
    plaintext: list[float] | None = None
    dealer_peak_rss_mb: float | None = None  # the dealer's peak resident memory (no dealer: None)
    # with shards: each owner's worker of shard s > 0 by its name (``model_owner@1``): the cost
    # of its part of each candidate (no score: shard 0 reveals)
    shard_results: dict[str, list[CandidateResult]] = field(default_factory=dict)

    def to_json(self) -> list[dict[str, Any]]:
        rows = []
        for i, r in enumerate(self.results):
            row = r.to_json()
            if self.plaintext is not None:
                row["plaintext"] = self.plaintext[i]
                if r.score is not None:
                    row["abs_diff"] = abs(r.score - self.plaintext[i])
            rows.append(row)
        return rows


@dataclass(frozen=True)
class LocalInputs:
    """The validated files of a local run and the metadata they agree on."""

    train: Dataset
    test: Dataset
    candidates: list[Candidate]  # validated in one streaming pass, read again in chunks
    n_features: int
    n_classes: int

    def model_owner_state(self, l2: float) -> ModelOwnerState:
        """θ̂ and v, as the model owner's worker computes them from these files."""
        tr, te = self.train, self.test
        return prepare_model_owner(tr.X, tr.y, te.X, te.y, n_classes=self.n_classes, l2=l2)


def candidate_names(paths: Sequence[str | Path]) -> list[str]:
    """Each candidate's id in the job and the results: its file's stem, as a data owner's service
    names an uploaded or registered file (``candidate_01.npz`` is ``candidate_01``). Characters an
    id may not hold become ``_``; a stem seen before gets ``.2``, ``.3``, ... in the order given."""
    names: list[str] = []
    for path in paths:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(path).stem)[:120] or "candidate"
        if not stem[0].isalnum():
            stem = "c" + stem
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}.{n}"
        names.append(name)
    return names


def _absolute(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def load_inputs(
    train: str | Path,
    test: str | Path,
    candidates: Sequence[str | Path],
    *,
    label_column: str | None = None,
) -> LocalInputs:
    """Load and cross-validate every file; feature and class counts come from the training set.

    The candidates are validated in one streaming pass and stay on disk (:func:`open_candidate`):
    this process, like the data owner's worker, never holds a whole candidate."""
    if not candidates:
        raise ConfigError("give at least one --candidate file")
    train_ds = load_dataset(train, label_column=label_column)
    n_features = train_ds.n_features
    test_ds = load_dataset(test, label_column=label_column, n_features=n_features)
    n_classes = int(max(train_ds.y.max(), test_ds.y.max())) + 1
    cands = [
        open_candidate(
            c,
            label_column=label_column,
            n_features=n_features,
            n_classes=n_classes,
            max_bytes=STREAMED_MAX_BYTES,
        )
        for c in candidates
    ]
    return LocalInputs(train_ds, test_ds, cands, n_features, n_classes)


def build_job(inputs: LocalInputs, names: Sequence[str], **params: Any) -> JobSpec:
    """The job of a local run; an invalid combination is a ConfigError naming the field."""
    try:
        return JobSpec(
            n_features=inputs.n_features,
            n_classes=inputs.n_classes,
            candidates=[
                CandidateMeta(name=name, n_samples=c.info.n_samples)
                for name, c in zip(names, inputs.candidates, strict=True)
            ],
            n_train=inputs.train.n_samples,
            n_test=inputs.test.n_samples,
            feature_bound=feature_bound(
                inputs.train.X,
                inputs.test.X,
                np.array([c.info.max_abs for c in inputs.candidates]),
            ),
            **params,
        )
    except ValidationError as exc:
        raise config_error(exc) from None


def run_local(
    *,
    train: str | Path,
    test: str | Path,
    candidates: Sequence[str | Path],
    method: str = "influence",
    l2: float = 1.0,
    steps: int = 16,
    lr: float = 0.1,
    batch_size: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    softmax_chunks: int = DEFAULT_SOFTMAX_CHUNKS,
    openings: str = "narrow",
    reveal: str = "score",
    threshold: float | None = None,
    direction: str | None = None,
    reveal_to: str = "both",
    noise_epsilon: float | None = None,
    insecure_tfp: bool = False,
    check: bool = False,
    label_column: str | None = None,
    timeout: float = 120.0,
    deadline: float = 3600.0,
    on_progress: Callable[[int, int], None] | None = None,
    threads: int = 1,
    shards: int = 1,
) -> LocalRun:
    """Appraise each candidate under two-party MPC; with ``check`` also compute the plaintext twin.

    Paths are resolved here, against the caller's working directory: the workers run in a
    directory of their own. ``timeout`` bounds the rendezvous and every network wait, ``deadline``
    the whole computation; ``threads`` is each party's count of compute threads
    (:attr:`PartyConfig.threads`). ``shards`` worker triples share each candidate's chunks
    (:mod:`common.mpc.shards`; influence and gradient norm), at most one per chunk of the largest
    candidate.
    """
    problem = shard_problem(method, shards)
    if problem is not None:
        raise ConfigError(problem, field="shards")
    names = candidate_names(candidates)
    train, test = _absolute(train), _absolute(test)
    candidates = [_absolute(c) for c in candidates]
    inputs = load_inputs(train, test, candidates, label_column=label_column)
    state: ModelOwnerState | None = None
    bound = None
    if noise_epsilon is not None or check:  # what the model owner computes, as it would
        state = inputs.model_owner_state(l2)
        if noise_epsilon is not None:
            bound = v_bound(state.v)
    job = build_job(
        inputs,
        names,
        method=method,
        l2=l2,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        softmax_chunks=softmax_chunks,
        openings=openings,
        reveal=reveal,
        direction=direction,
        provider="TFP" if insecure_tfp else "TTP",
        reveal_to=reveal_to,
        noise_epsilon=noise_epsilon,
        v_bound=bound,
    )
    role_inputs: dict[str, dict[str, Any]] = {
        "model_owner": {"train": str(train), "test": str(test), "threshold": threshold},
        "data_owner": {"candidates": [str(c) for c in candidates], "label_column": label_column},
    }
    if not insecure_tfp:
        role_inputs["dealer"] = {}
    # fewer shards than asked when even the largest candidate has fewer chunks
    count = min(shards, max(chunk_count(c.n_samples, chunk_rows) for c in job.candidates))
    with private_workdir() as work:
        try:
            configs = session_shards(
                job,
                work,
                role_inputs,
                shards=count,
                timeout=timeout,
                allow_insecure_tfp=insecure_tfp,
                threads=threads,
            )
        except ValidationError as exc:
            raise config_error(exc) from None
        reports = _run(configs, timeout, deadline, on_progress)

    mine = [CandidateResult.model_validate(r) for r in reports["model_owner"]["results"]]
    theirs = [CandidateResult.model_validate(r) for r in reports["data_owner"]["results"]]
    for a, b in zip(mine, theirs, strict=True):
        if reveal_to == "both" and (a.score, a.accept) != (b.score, b.accept):
            raise MPCError(f"the parties disagree on candidate {a.candidate}: {a} vs {b}")
    plain = None
    if check:
        assert state is not None
        plain = [
            streamed_score(job, state, inputs.train, inputs.test, c.chunks)
            for c in inputs.candidates
        ]
    dealers = [r for name, r in reports.items() if name.partition("@")[0] == "dealer"]
    rss = [float(d["peak_rss_mb"]) for d in dealers if "peak_rss_mb" in d]
    return LocalRun(
        job,
        mine,
        theirs,
        sum(int(d.get("bytes_sent", 0)) for d in dealers),
        plain,
        max(rss) if rss else None,
        {
            name: [CandidateResult.model_validate(r) for r in report["results"]]
            for name, report in reports.items()
            if "@" in name and "results" in report
        },
    )


def session_shards(
    job: JobSpec,
    work: Path,
    role_inputs: dict[str, dict[str, Any]],
    *,
    shards: int,
    timeout: float,
    **options: Any,
) -> list[PartyConfig]:
    """Every party's configuration of one local session in ``shards`` shards
    (:mod:`common.mpc.shards`): each shard its own session of
    :func:`~common.runtime.supervisor.session_configs` (its own keys and rendezvous port), its
    files in its own private workdir (``work`` for shard 0, ``work/shard-s`` for the others) and,
    with several shards, each owner's hand-off directory. ``options`` go to every party."""
    session_id = "local-" + secrets.token_hex(8)
    inputs_of = _shard_inputs(role_inputs, work, shards)
    configs: list[PartyConfig] = []
    for shard in range(shards):
        by_role = session_configs(
            job,
            work if shard == 0 else _private(work / f"shard-{shard}"),
            inputs_of,
            timeout=timeout,
            session_id=session_id if shards == 1 else f"{session_id}-{shard}",
            shard=shard,
            shards=shards,
            **options,
        )
        configs += by_role.values()
    return configs


def _private(directory: Path) -> Path:
    directory.mkdir(mode=0o700)
    return directory


def _shard_inputs(
    role_inputs: dict[str, dict[str, Any]], work: Path, count: int
) -> dict[str, dict[str, Any]]:
    """Each role's inputs in every shard's session: with several shards, each owner's hand-off
    directory too (:mod:`common.runtime.handoff`; private, made here), the same for all of that
    owner's shards."""
    if count == 1:
        return role_inputs
    _private(work / "shares")
    return {
        role: extra
        if role == "dealer"
        else {**extra, "shard_dir": str(_private(work / "shares" / role))}
        for role, extra in role_inputs.items()
    }


def _run(
    configs: list[PartyConfig],
    rendezvous_seconds: float,
    compute_seconds: float,
    on_progress: Callable[[int, int], None] | None,
) -> dict[str, dict[str, Any]]:
    """Start the parties, each in its shard's workdir, the one that holds its files
    (:func:`~common.runtime.supervisor.party_config`), and supervise them; their result
    payloads by party name (:attr:`~common.runtime.supervisor.Party.name`), or the error that
    ended them."""

    def progressed(role: str, progress: Any) -> None:
        if on_progress is not None and role == "model_owner":
            on_progress(progress.done, progress.total)

    async def run() -> Any:
        parties = [start_party(c, Path(c.result_file).parent) for c in configs]
        return await supervise(
            parties,
            rendezvous_seconds=rendezvous_seconds,
            compute_seconds=compute_seconds,
            on_progress=progressed,
        )

    report = asyncio.run(run())
    if report.outcome == "completed":
        return report.results
    if report.outcome == "expired" or "did not finish within" in report.reason:
        raise PeerTimeout(report.reason)
    raise MPCRunError(report.reason, report.report)


def plaintext_scores(
    *,
    train: str | Path,
    test: str | Path,
    candidates: Sequence[str | Path],
    method: str = "influence",
    l2: float = 1.0,
    steps: int = 16,
    lr: float = 0.1,
    batch_size: int | None = None,
    label_column: str | None = None,
) -> list[float]:
    """The plaintext twin of :func:`run_local`'s scores, computed in this process."""
    inputs = load_inputs(train, test, candidates, label_column=label_column)
    names = candidate_names(candidates)
    job = build_job(inputs, names, method=method, l2=l2, steps=steps, lr=lr, batch_size=batch_size)
    state = inputs.model_owner_state(l2)
    return [
        streamed_score(job, state, inputs.train, inputs.test, c.chunks) for c in inputs.candidates
    ]
