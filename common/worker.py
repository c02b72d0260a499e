"""Entry point of one MPC party process: the model owner, the data owner, or the dealer.

A supervisor (:mod:`common.launcher`) starts ``python -m common.worker`` with the path of a JSON
:class:`PartyConfig` in the environment variable ``DATA_APPRAISAL_WORKER_CONFIG`` — never a secret
on the command line. The process

1. loads *only its own* inputs (and validates them against the agreed metadata),
2. joins the rendezvous over TCP (torch.distributed, gloo) with a deadline,
3. runs the agreed appraisal for every candidate in order, writing one JSON line per finished
   candidate to its progress file,
4. writes its results to ``result_file``; or, on any exception, a JSON error report (type, message,
   traceback) to ``error_file`` and exits with status 1.

Ranks: 0 model owner, 1 data owner, 2 the dealer (CrypTen's trusted third party, which generates
Beaver triples and holds no input).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import secrets
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, Field

from common.errors import ConfigError, DataError, PeerTimeout

if TYPE_CHECKING:
    from common.data import Dataset
    from common.mpc_appraisal import DataOwnerInputs, ModelOwnerInputs

CONFIG_ENV = "DATA_APPRAISAL_WORKER_CONFIG"
Role = Literal["model_owner", "data_owner", "dealer"]
RANKS: dict[str, int] = {"model_owner": 0, "data_owner": 1, "dealer": 2}

log = logging.getLogger("data_appraisal.worker")


class CandidateMeta(BaseModel):
    """Public metadata of one candidate data set."""

    name: str
    n_samples: int = Field(gt=0)


class JobSpec(BaseModel):
    """What both parties agreed to compute: public to both."""

    method: Literal["influence", "gradient-norm", "finetune"] = "influence"
    n_features: int = Field(gt=0)
    n_classes: int = Field(ge=2)
    candidates: list[CandidateMeta]
    n_train: int = Field(default=0, ge=0)
    n_test: int = Field(default=0, ge=0)
    feature_bound: float = Field(default=1.0, gt=0, description="agreed bound on |x|, power of 2")
    l2: float = Field(default=1.0, gt=0)
    steps: int = Field(default=16, ge=1)
    lr: float = Field(default=0.1, gt=0)
    batch_size: int | None = Field(default=None, gt=0)
    reveal: Literal["score", "threshold"] = "score"
    direction: Literal["lower", "higher"] | None = None
    provider: Literal["TTP", "TFP"] = "TTP"


class PartyConfig(BaseModel):
    role: Role
    rendezvous: str  # tcp://host:port
    job: JobSpec
    timeout_seconds: float = Field(default=120.0, gt=0)
    result_file: str
    error_file: str
    progress_file: str
    # model owner only
    train: str | None = None
    test: str | None = None
    state: str | None = None  # npz with theta, v (precomputed θ̂ and H⁻¹ḡ); trained if absent
    threshold: float | None = None
    # data owner only
    candidates: list[str] = Field(default_factory=list)
    label_column: str | None = None


def bytes_written() -> int:
    """Bytes this process has passed to write-family system calls, gloo's sockets included."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _report_progress(config: PartyConfig, done: int, total: int) -> None:
    with open(config.progress_file, "a") as f:
        f.write(json.dumps({"role": config.role, "done": done, "total": total}) + "\n")


def _exit_with_parent() -> None:
    """End this process if its supervisor dies (it runs in its own session, so no signal comes).

    Without this, a killed service would leave its worker blocked on a socket until the gloo
    timeout; with it, the worker is gone within a second and its peers see the connection close.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _write_json(path: str, payload: object) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _configure_crypten(job: JobSpec) -> None:
    from common.compat import import_crypten

    crypten = import_crypten()
    crypten.cfg.mpc.provider = job.provider
    crypten.cfg.communicator.verbose = True  # record bytes and rounds


def _set_dist_env(config: PartyConfig) -> None:
    os.environ.update(
        {
            "DISTRIBUTED_BACKEND": "gloo",
            "RENDEZVOUS": config.rendezvous,
            "WORLD_SIZE": "2",
            "RANK": str(RANKS[config.role]),
        }
    )


def run_dealer(config: PartyConfig) -> dict[str, object]:
    """Serve Beaver triples until the model owner's worker says it is done."""
    import torch

    from common.compat import import_crypten, rendezvous_timeout

    crypten = import_crypten()
    # CrypTen's dealer draws each party's generator seed from torch's global RNG; seed that RNG
    # from the OS so that the seeds are not predictable from a fixed torch.manual_seed.
    torch.manual_seed(secrets.randbits(63))
    try:
        with rendezvous_timeout(config.timeout_seconds):
            crypten.mpc.provider.ttp_provider.TTPServer()
    except Exception as exc:
        raise PeerTimeout(
            f"the dealer lost its parties at {config.rendezvous} (they did not join, or stopped, "
            f"within {config.timeout_seconds:g} s: {type(exc).__name__}: {exc})"
        ) from exc
    return {"role": "dealer", "bytes_written": bytes_written()}


def _check_bound(ds: Dataset, bound: float) -> None:
    largest = float(np.abs(ds.X).max())
    if largest > bound:
        raise DataError(
            f"{ds.source}: a feature has |x| = {largest:g}, above the agreed feature bound {bound:g}"
        )


def _load_model_owner(config: PartyConfig) -> ModelOwnerInputs:
    from common.data import load_dataset
    from common.model import ModelOwnerState, add_bias, prepare_model_owner
    from common.mpc_appraisal import MAX_LOGIT_GAP, ModelOwnerInputs, logit_gap_bound

    job = config.job
    if config.train is None or config.test is None:
        raise ConfigError("the model owner needs its train and test files")
    train = load_dataset(config.train, n_features=job.n_features, n_classes=job.n_classes)
    test = load_dataset(config.test, n_features=job.n_features, n_classes=job.n_classes)
    if config.state is not None:
        with np.load(config.state) as f:
            state = ModelOwnerState(
                theta=f["theta"], v=f["v"], test_loss=float(f["test_loss"]), l2=job.l2
            )
    else:
        state = prepare_model_owner(
            train.X, train.y, test.X, test.y, n_classes=job.n_classes, l2=job.l2
        )
    for ds in (train, test):
        _check_bound(ds, job.feature_bound)
    gap = logit_gap_bound(state.theta, max(1.0, job.feature_bound))
    if gap > MAX_LOGIT_GAP:
        log.warning(
            "the model's logit gap can reach %.0f on inputs within the feature bound; the MPC "
            "softmax is accurate up to %.0f, so extreme candidates may be appraised inaccurately",
            gap,
            MAX_LOGIT_GAP,
        )
    if job.reveal == "threshold" and config.threshold is None:
        raise ConfigError("threshold reveal needs --threshold τ (the model owner's secret)")
    return ModelOwnerInputs(
        theta=state.theta,
        v=state.v,
        X_train=add_bias(train.X),
        y_train=train.y,
        X_test=add_bias(test.X),
        y_test=test.y,
        threshold=config.threshold,
    )


def _load_data_owner(config: PartyConfig) -> list[DataOwnerInputs]:
    from common.data import load_dataset
    from common.model import add_bias
    from common.mpc_appraisal import DataOwnerInputs

    job = config.job
    if len(config.candidates) != len(job.candidates):
        raise ConfigError(
            f"the data owner has {len(config.candidates)} candidate files, "
            f"the job lists {len(job.candidates)}"
        )
    inputs = []
    for path, meta in zip(config.candidates, job.candidates, strict=True):
        ds = load_dataset(
            path,
            label_column=config.label_column,
            n_features=job.n_features,
            n_classes=job.n_classes,
        )
        _check_bound(ds, job.feature_bound)
        if ds.n_samples != meta.n_samples:
            raise ConfigError(
                f"{path}: has {ds.n_samples} samples, the agreed metadata says {meta.n_samples}"
            )
        inputs.append(DataOwnerInputs(X=add_bias(ds.X), y=ds.y))
    return inputs


def run_party(config: PartyConfig) -> dict[str, object]:
    """Model owner or data owner: load own inputs, rendezvous, appraise every candidate."""
    from common.compat import import_crypten, rendezvous_timeout
    from common.mpc_appraisal import Shapes, appraise_candidate

    crypten = import_crypten()
    job = config.job
    mo = _load_model_owner(config) if config.role == "model_owner" else None
    do = _load_data_owner(config) if config.role == "data_owner" else None
    if job.provider == "TFP":
        log.warning(
            "INSECURE: the TFP provider lets the model owner's worker generate every Beaver "
            "triple and so read the data owner's secrets; use the dealer (TTP) in any real run"
        )
    try:
        with rendezvous_timeout(config.timeout_seconds):
            crypten.init()
    except Exception as exc:
        raise PeerTimeout(
            f"the parties did not all join the rendezvous at {config.rendezvous} within "
            f"{config.timeout_seconds:g} s ({type(exc).__name__}: {exc})"
        ) from exc
    _report_progress(config, 0, len(job.candidates))  # joined: the run has started
    comm = crypten.communicator.get()
    results: list[dict[str, object]] = []
    try:
        for index, meta in enumerate(job.candidates):
            crypten.reset_communication_stats()
            written = bytes_written()
            start = time.perf_counter()
            shapes = Shapes(
                n_features=job.n_features,
                n_classes=job.n_classes,
                n_candidate=meta.n_samples,
                n_train=job.n_train,
                n_test=job.n_test,
                feature_bound=job.feature_bound,
            )
            outcome = appraise_candidate(
                job.method,
                shapes,
                mo,
                None if do is None else do[index],
                reveal=job.reveal,
                direction=job.direction,
                steps=job.steps,
                lr=job.lr,
                l2=job.l2,
                batch_size=job.batch_size,
            )
            stats = comm.get_communication_stats()
            result: dict[str, object] = {
                "candidate": meta.name,
                "score": outcome.score,
                "accept": outcome.accept,
                "seconds": time.perf_counter() - start,
                "crypten_bytes": int(stats["bytes"]),  # CrypTen's count: sent + received
                "rounds": int(stats["rounds"]),
                "bytes_written": bytes_written() - written,
                # peak resident memory of this party's process so far (Linux reports KiB)
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            results.append(result)
            _report_progress(config, index + 1, len(job.candidates))
    finally:
        crypten.uninit()
    return {"role": config.role, "results": results}


def main() -> int:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        print(
            f"{CONFIG_ENV} is not set; this module is started by common.launcher", file=sys.stderr
        )
        return 2
    config = PartyConfig.model_validate_json(Path(path).read_text())
    logging.basicConfig(
        level=logging.INFO if os.environ.get("DATA_APPRAISAL_DEBUG") else logging.WARNING,
        format=f"%(asctime)s {config.role} rank={RANKS[config.role]} %(levelname)s %(message)s",
    )
    _exit_with_parent()
    try:
        _set_dist_env(config)
        _configure_crypten(config.job)
        payload = run_dealer(config) if config.role == "dealer" else run_party(config)
        _write_json(config.result_file, payload)
        return 0
    except BaseException as exc:  # reported to the supervisor, which re-raises it for the user
        _write_json(
            config.error_file,
            {
                "role": config.role,
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc(),
            },
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
