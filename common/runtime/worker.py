"""One MPC party process: the model owner's, the data owner's or the dealer's worker.

A supervisor (:mod:`common.runtime.supervisor`) forks it from its fork server (or starts
``python -m common.runtime.worker``) with the path of its :class:`PartyConfig` in the environment
variable ``DATA_APPRAISAL_WORKER_CONFIG``. The process

1. loads *only its own* inputs and validates them against the agreed metadata,
2. joins the rendezvous with a deadline: the model owner's worker listens on the rendezvous address,
   the others connect, and every link authenticates with the session's pre-shared keys before
   anything secret is sent (:mod:`common.mpc.transport`),
3. appraises every candidate in order (:func:`common.mpc.appraisal.secure_appraisal`), writing
   progress events to its progress file: ``joined``, then ``started`` and ``result`` per candidate,
4. writes its results to ``result_file``; or, on any exception, a JSON error report (type, message,
   traceback) to ``error_file`` and exits with status 1.

Ranks: 0 model owner, 1 data owner, 2 the dealer (a third party that generates the Beaver triples
and holds no input).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import secrets
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from common.errors import ConfigError, DataError
from common.mpc.shards import WHOLE, Shard
from common.protocol import RANKS, CandidateResult, JobSpec, link_name, model_owner_problem
from common.runtime.config import CONFIG_ENV, PartyConfig

if TYPE_CHECKING:
    from common.ml.data import Dataset
    from common.mpc.plan import Item
    from common.mpc.statistics import DataOwnerInputs, ModelOwnerInputs
    from common.mpc.transport import Channel
    from common.runtime.handoff import ShareDrop

PROCESS_NAMES = {
    "model_owner": "da-model-owner",
    "data_owner": "da-data-owner",
    "dealer": "da-dealer",
}

log = logging.getLogger("data_appraisal.worker")
STREAMED_MAX_BYTES = 1 << 40  # a candidate read in chunks: its size bounds time, not memory


def _report(config: PartyConfig, event: str, **fields: object) -> None:
    """Append one event to the progress file: ``ready`` (its inputs are loaded and valid: the
    rendezvous clock starts), ``joined`` (with ``total``), ``started`` (candidate ``index`` enters
    the MPC: from here on its value may be revealed) and ``result``."""
    with open(config.progress_file, "a") as f:
        f.write(json.dumps({"role": config.role, "event": event, **fields}) + "\n")


def _exit_with_parent() -> None:
    """End this process if its parent dies (it runs in its own session, so no signal comes).

    The parent is the supervisor's fork server, which exits with the supervisor. Without this, a
    killed service would leave its worker blocked on a socket until the network timeout; with it,
    the worker is gone within a second and its peers see the connection close.
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


def _digest(config: PartyConfig) -> bytes:
    """What this worker's handshakes bind: the job's digest, made its shard's own with shards."""
    return config.part.digest(config.job.digest())


def _psk(config: PartyConfig, peer: str) -> bytes:
    link = link_name(config.role, peer)
    value = None if config.keys is None else config.keys.key(link)
    if value is None:
        raise ConfigError(
            f"the {config.role}'s worker has no pre-shared key for the {link} link; the secure "
            "transport needs the session keys agreed over REST"
        )
    return value


def _connect_to_model_owner(config: PartyConfig) -> Channel:
    """The data owner's or the dealer's authenticated channel to the model owner's worker."""
    from common.mpc import transport

    host, port = transport.parse_rendezvous(config.rendezvous)
    return transport.connect(
        config.role,
        host,
        port,
        _psk(config, "model_owner"),
        session_id=config.session_id,
        job_digest=_digest(config),
        window=config.timeout_seconds,
    )


def _relayed_link(config: PartyConfig, via: Channel) -> Callable[[str], bytes]:
    """The data owner ↔ dealer key schedule, agreed through the model owner's relay: its keys by
    label, as a direct link's :meth:`~common.mpc.transport.Channel.derive` gives them."""
    from common.mpc import transport

    other = "dealer" if config.role == "data_owner" else "data_owner"
    schedule = transport.relayed_key(
        config.role,
        via,
        _psk(config, other),
        session_id=config.session_id,
        job_digest=_digest(config),
    )
    return lambda label: schedule.derive("derived/" + label)


def run_dealer(config: PartyConfig) -> dict[str, object]:
    """Serve Beaver triples until the model owner's worker says it is done."""
    from common.mpc.communicator import close_channels
    from common.mpc.dealer import Dealer, serve_dealer
    from common.mpc.streams import install_stream_rng

    job = config.job
    plans = job_plans(job, config.part)  # a dealer has no inputs to load, only the public plans
    _report(config, "ready")
    mo = _connect_to_model_owner(config)
    try:
        link = _relayed_link(config, mo)
        _report(config, "joined", total=len(job.candidates))
        with tempfile.TemporaryDirectory(prefix="da-dealer-") as spill:  # mkdtemp: mode 0700
            # each owner's link keys one stream per (candidate, attempt): dealer.attempt_stream
            dealer = Dealer(mo.derive, link, spill=Path(spill))
            install_stream_rng()
            requests = serve_dealer(mo, dealer, plans.__getitem__, len(plans))
    finally:
        close_channels(mo)
    return {
        "role": "dealer",
        "requests": requests,
        "bytes_sent": mo.bytes_sent,
        "bytes_received": mo.bytes_received,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def job_plans(job: JobSpec, shard: Shard = WHOLE) -> list[list[Item]]:
    """Every candidate's plan (:func:`common.mpc.plan.compute_plan`), computed before the
    rendezvous; with ``shard``, that shard's plans (what its pair computes of each candidate).

    A plan is a function of the public job alone, so the dealer (which serves it) and the data
    owner (which checks its draws against it) compute them all while loading, not when each
    candidate is due: the plan's inputless run (about 0.1 s per candidate at MNIST size, 0.3 s for
    fine-tuning, plus CrypTen's first-call warm-up) is then off the candidates' critical path. It
    still counts in the run's wall time, before the party reports ``ready``.
    """
    from common.mpc.plan import compute_plan

    return [compute_plan(job, index, shard=shard) for index in range(len(job.candidates))]


def _check_bound(ds: Dataset, bound: float) -> None:
    largest = float(np.abs(ds.X).max())
    if largest > bound:
        raise DataError(
            f"{ds.source}: a feature has |x| = {largest:g}, above the agreed feature bound {bound:g}"
        )


def _load_model_owner(config: PartyConfig) -> ModelOwnerInputs:
    from common.ml.data import load_dataset
    from common.ml.model import ModelOwnerState, add_bias, prepare_model_owner
    from common.mpc.fixedpoint import MAX_LOGIT_GAP
    from common.mpc.statistics import ModelOwnerInputs, logit_gap_bound

    job = config.job
    assert config.train is not None and config.test is not None  # PartyConfig requires them
    train = load_dataset(config.train, n_features=job.n_features, n_classes=job.n_classes)
    test = load_dataset(config.test, n_features=job.n_features, n_classes=job.n_classes)
    drop = _share_drop(config)
    if config.state is not None:
        with np.load(config.state) as f:
            state = ModelOwnerState(
                theta=f["theta"], v=f["v"], test_loss=float(f["test_loss"]), l2=job.l2
            )
    elif drop is not None and config.shard > 0:  # shard 0 trains, every shard uses its θ̂
        state = drop.model(config.shard, job.l2)
    else:
        state = prepare_model_owner(
            train.X, train.y, test.X, test.y, n_classes=job.n_classes, l2=job.l2
        )
    if drop is not None and config.shard == 0:
        drop.hand_over_model(state, config.shards)
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
    # v within the agreed v_bound, and the statistic in range for this v (before the rendezvous)
    problem = model_owner_problem(job, float(np.linalg.norm(state.v, axis=0).max()))
    if problem is not None:
        raise ConfigError(problem)
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
    """Validate every candidate in one streaming pass, before any MPC, and keep it on disk.

    The MPC then reads each candidate again in chunks of the job's public ``chunk_rows``
    (:func:`common.mpc.statistics.chunk_bounds`) and holds one chunk at a time whatever the
    file's size (fine-tuning keeps its chunks in a private spill directory between steps).
    """
    from common.ml.data import open_candidate
    from common.mpc.statistics import DataOwnerInputs

    job = config.job
    max_bytes = STREAMED_MAX_BYTES
    inputs = []
    for path, meta in zip(config.candidates, job.candidates, strict=True):
        candidate = open_candidate(
            path,
            n_features=job.n_features,
            n_classes=job.n_classes,
            n_samples=meta.n_samples,
            feature_bound=job.feature_bound,
            label_column=config.label_column,
            rows=job.chunk_rows,
            max_bytes=max_bytes,
        )
        inputs.append(DataOwnerInputs(candidate=candidate))
    return inputs


@contextlib.contextmanager
def _secure_session(config: PartyConfig, plans: list[list[Item]] | None) -> Iterator[Any]:
    """Authenticated, encrypted channels (:mod:`common.mpc.transport`) and CrypTen swapped onto them.

    ``plans``: the job's plans (:func:`job_plans`), which the data owner checks its draws against.
    """
    from common.mpc import transport
    from common.mpc.communicator import SecureCommunicator, close_channels, installed
    from common.mpc.dealer import DealerProvider
    from common.mpc.streams import owner_generators

    job = config.job
    host, port = transport.parse_rendezvous(config.rendezvous)
    digest = _digest(config)
    with_dealer = job.provider == "TTP"
    dealer: transport.Channel | None = None
    if config.role == "model_owner":
        psks = {"data_owner": _psk(config, "data_owner")}
        if with_dealer:
            psks["dealer"] = _psk(config, "dealer")
        channels = transport.accept_peers(
            config.listen_host or host,  # behind NAT: the local address the advertised one maps to
            port,
            psks,
            session_id=config.session_id,
            job_digest=digest,
            window=config.timeout_seconds,
        )
        peer, dealer = channels["data_owner"], channels.get("dealer")
    else:
        peer = _connect_to_model_owner(config)
    try:
        rank = RANKS[config.role]
        provider: DealerProvider | None = None
        # each owner's provider draws from one stream per (candidate, attempt), keyed by its link
        # with the dealer (dealer.attempt_stream)
        if with_dealer and dealer is not None:
            transport.relay_handshake(peer, dealer)
            provider = DealerProvider(rank, dealer.derive, dealer)
        elif with_dealer:
            assert plans is not None  # run_party computes them for a data owner with a dealer
            # the data owner checks each of its draws against the job's plan before using it
            provider = DealerProvider(
                rank,
                _relayed_link(config, peer),
                None,
                plan=plans.__getitem__,
            )
        comm = SecureCommunicator(rank, peer, dealer)
        with installed(comm, owner_generators(rank, peer), provider):
            yield comm, provider
            if provider is not None:
                provider.finish()
            comm.barrier()  # neither side closes while the other still reads
    finally:
        close_channels(peer, dealer)


def run_party(config: PartyConfig) -> dict[str, object]:
    """Model owner or data owner: load own inputs, rendezvous, appraise every candidate."""
    from common.mpc.appraisal import secure_appraisal

    job = config.job
    shard = config.part
    mo = _load_model_owner(config) if config.role == "model_owner" else None
    do = _load_data_owner(config) if config.role == "data_owner" else None
    checks_plans = config.role == "data_owner" and job.provider == "TTP"
    plans = job_plans(job, shard) if checks_plans else None
    exchange = _share_drop(config)

    def prefetch(index: int) -> None:
        assert do is not None
        part = _chunks(shard, job.candidates[index].n_samples, job.chunk_rows)
        if part is None or part:  # a shard that skips the candidate reads none of it
            do[index].prefetch(job.chunk_rows, job.feature_bound, part)

    if do:  # the first chunk read while the parties meet (wall time, not a candidate's MPC)
        prefetch(0)
    _report(config, "ready")
    results: list[dict[str, object]] = []
    with _secure_session(config, plans) as (comm, provider):

        def traffic() -> tuple[int, int]:
            return (
                sum(c.bytes_sent for c in comm.channels),
                sum(c.bytes_received for c in comm.channels),
            )

        _report(config, "joined", total=len(job.candidates))
        for index, meta in enumerate(job.candidates):
            _report(config, "started", index=index)
            comm.reset_communication_stats()
            sent, received = traffic()
            start = time.perf_counter()
            if provider is not None:
                provider.begin(index)

            def on_step(done: int, total: int, index: int = index) -> None:
                _report(config, "step", index=index, done=done, total=total)

            revealed = secure_appraisal(
                job,
                index,
                mo,
                None if do is None else do[index],
                on_step=on_step,
                shard=shard,
                exchange=exchange,
            )
            if provider is not None:
                provider.end()
            stats = comm.get_communication_stats()
            now_sent, now_received = traffic()
            result = CandidateResult(
                candidate=meta.name,
                method=job.method,
                score=revealed.score,
                accept=revealed.accept,
                seconds=time.perf_counter() - start,
                bytes_sent=now_sent - sent,
                bytes_received=now_received - received,
                rounds=int(stats["rounds"]),
                # peak resident memory of this party's process so far (Linux reports KiB)
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            ).model_dump()
            results.append(result)
            _report(config, "result", index=index, result=result)
            if do is not None and index + 1 < len(do):
                prefetch(index + 1)
    return {"role": config.role, "results": results}


def _share_drop(config: PartyConfig) -> ShareDrop | None:
    """Where this owner's shards hand each other their shares and θ̂ (None: a single pair)."""
    from common.runtime.handoff import ShareDrop

    return None if config.shard_dir is None else ShareDrop(config.shard_dir, config.timeout_seconds)


def _chunks(shard: Shard, n: int, rows: int) -> range | None:
    """The chunks a data owner's worker reads of a candidate of ``n`` rows (None: all)."""
    return None if shard.count == 1 else shard.chunks(n, rows)


def check_policy(config: PartyConfig) -> None:
    """Refuse what this party's own configuration does not allow, before any network traffic."""
    if config.job.provider == "TFP" and not config.allow_insecure_tfp:
        raise ConfigError(
            "the TFP provider lets the model owner's worker generate every Beaver triple and so "
            "read the data owner's inputs; it is refused unless explicitly allowed "
            "(allow_insecure_tfp, or --insecure-tfp for a local run)"
        )
    if config.job.provider == "TFP":
        log.warning(
            "INSECURE: the TFP provider lets the model owner's worker generate every Beaver "
            "triple and so read the data owner's secrets; use the dealer (TTP) in any real run"
        )


def reseed_inherited_generators() -> None:
    """Forget the state of torch's, NumPy's and Python's global generators (a forked worker
    inherits its fork server's). Nothing secret is drawn from them, but no two workers may share
    a stream whatever CrypTen does internally."""
    import random

    import torch

    torch.manual_seed(secrets.randbits(63))
    np.random.seed(secrets.randbits(32))
    random.seed(secrets.randbits(128))


def limit_threads(threads: int) -> None:
    """Use at most ``threads`` threads for torch's and the BLAS's kernels (a forked worker inherits
    its fork server's defaults, one thread per core, which oversubscribes the machine)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def _set_process_name(role: str) -> None:
    """Name this process (``ps``, ``top``) after its role: ``da-model-owner`` and so on."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.prctl(15, PROCESS_NAMES[role].encode(), 0, 0, 0)  # PR_SET_NAME


def _configure_crypten(job: JobSpec) -> None:
    from common.mpc.compat import import_crypten

    crypten = import_crypten()
    crypten.cfg.mpc.provider = job.provider
    crypten.cfg.communicator.verbose = True  # record bytes and rounds


def main() -> int:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        print(f"{CONFIG_ENV} is not set; this module is started by a supervisor", file=sys.stderr)
        return 2
    try:
        config = PartyConfig.model_validate_json(Path(path).read_text())
    except (OSError, ValueError) as exc:  # no error file is known yet: the supervisor reads this
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            detail = f"{where}: {first['msg']}"
        else:
            detail = str(exc)
        print(f"cannot read the worker configuration {path}: {detail}", file=sys.stderr)
        return 2
    if config.keys is not None:  # the session keys live on in this process's memory only
        Path(path).unlink(missing_ok=True)
    _set_process_name(config.role)
    limit_threads(config.threads)
    logging.basicConfig(
        level=logging.INFO if os.environ.get("DATA_APPRAISAL_DEBUG") else logging.WARNING,
        format=f"%(asctime)s {config.role}{config.part.label} rank={RANKS[config.role]} "
        "%(levelname)s %(message)s",
    )
    _exit_with_parent()
    # this party's temporary files (fine-tuning's spilled chunks) go to its private 0700 workdir,
    # which the supervisor removes even if this process is killed
    tempfile.tempdir = str(Path(config.result_file).parent)
    try:
        check_policy(config)
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
