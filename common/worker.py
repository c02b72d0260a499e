"""Entry point of one MPC party process: the model owner, the data owner, or the dealer.

A supervisor (:mod:`common.launcher`) starts ``python -m common.worker`` with the path of a JSON
:class:`PartyConfig` in the environment variable ``DATA_APPRAISAL_WORKER_CONFIG`` — never a secret
on the command line. The process

1. loads *only its own* inputs (and validates them against the agreed metadata),
2. joins the rendezvous with a deadline: the model owner's worker listens on the rendezvous address,
   the others connect, and every link authenticates with the session's pre-shared keys before
   anything secret is sent (:mod:`common.transport`, :mod:`common.secure_mpc`),
3. runs the agreed appraisal for every candidate in order, writing JSON events to its progress file
   (joined; each candidate started; each candidate's result),
4. writes its results to ``result_file``; or, on any exception, a JSON error report (type, message,
   traceback) to ``error_file`` and exits with status 1.

Ranks: 0 model owner, 1 data owner, 2 the dealer (a third party that generates Beaver triples and
holds no input). ``JobSpec.transport == "gloo"`` selects CrypTen's own unprotected transport, kept
only so that the benchmark can measure what the hardening costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import resource
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, model_validator

from common.errors import ConfigError, DataError, PeerTimeout

if TYPE_CHECKING:
    from common.data import Dataset
    from common.mpc_appraisal import DataOwnerInputs, ModelOwnerInputs
    from common.transport import Channel

CONFIG_ENV = "DATA_APPRAISAL_WORKER_CONFIG"
PROCESS_NAMES = {
    "model_owner": "da-model-owner",
    "data_owner": "da-data-owner",
    "dealer": "da-dealer",
}
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
    reveal_to: Literal["both", "model_owner"] = Field(
        default="both",
        description="who learns the score or bit: both owners, or the model owner only",
    )
    noise_epsilon: float | None = Field(
        default=None,
        gt=0,
        description="influence only: the data owner adds Laplace noise to the released statistic "
        "so that each release is ε-differentially private for one candidate sample",
    )
    v_bound: float | None = Field(
        default=None,
        gt=0,
        description="public bound on max_j ‖v_j‖₂ (a power of two, from the model owner), needed to "
        "calibrate the noise",
    )
    transport: Literal["secure", "gloo"] = Field(
        default="secure",
        description="secure: authenticated, encrypted channels (common.transport); gloo: CrypTen's "
        "unprotected torch.distributed transport, kept only to measure the hardening's cost",
    )

    @model_validator(mode="after")
    def _noise_needs_influence_and_bound(self) -> JobSpec:
        if self.noise_epsilon is not None:
            if self.method != "influence":
                raise ValueError(
                    "noise is calibrated for influence only: its statistic is a sum over the "
                    "candidate's samples with a public bound on each term"
                )
            if self.v_bound is None:
                raise ValueError("noise_epsilon needs v_bound, the model owner's public bound")
        return self


def _key() -> str:
    return secrets.token_hex(32)


class SessionKeys(BaseModel):
    """Pre-shared keys of one session, 32 random bytes each (hex), agreed over authenticated REST.

    The model owner's service draws all three and hands each peer only the keys of its own links:
    the data owner gets ``mo_do`` and ``do_dealer``, the dealer ``mo_dealer`` and ``do_dealer``. A key
    only authenticates a link's handshake; the traffic keys come from an ephemeral X25519 exchange
    inside it, so a party that knows another link's pre-shared key still cannot read that link.
    """

    mo_do: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    mo_dealer: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    do_dealer: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def new(cls) -> SessionKeys:
        return cls(mo_do=_key(), mo_dealer=_key(), do_dealer=_key())

    @staticmethod
    def links(role: str, provider: str = "TTP") -> tuple[str, ...]:
        """The links ``role``'s worker has; without a dealer (TFP) only the owners' link."""
        if provider != "TTP":
            return () if role == "dealer" else ("mo_do",)
        return {
            "model_owner": ("mo_do", "mo_dealer"),
            "data_owner": ("mo_do", "do_dealer"),
            "dealer": ("mo_dealer", "do_dealer"),
        }[role]

    def for_role(self, role: str) -> SessionKeys:
        """Only the keys of ``role``'s own links."""
        return SessionKeys(**{k: getattr(self, k) for k in self.links(role)})

    @staticmethod
    def missing(keys: SessionKeys | None, role: str, provider: str = "TTP") -> list[str]:
        """The links of ``role`` for which ``keys`` hold no key."""
        return [k for k in SessionKeys.links(role, provider) if getattr(keys, k, None) is None]

    def __repr__(self) -> str:  # never print a key
        return f"SessionKeys({', '.join(k for k, v in self.__dict__.items() if v)})"

    __str__ = __repr__


class PartyConfig(BaseModel):
    role: Role
    rendezvous: str  # tcp://host:port; the model owner's worker listens there, the others connect
    job: JobSpec
    session_id: str = Field(default_factory=lambda: "local-" + secrets.token_hex(8))
    keys: SessionKeys | None = None  # required by the secure transport
    allow_insecure_tfp: bool = False  # JobSpec.provider == "TFP" is refused unless this is set
    timeout_seconds: float = Field(default=120.0, gt=0)
    threads: int = Field(
        default=1, ge=1, le=256, description="torch and BLAS threads of the worker"
    )
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

    @model_validator(mode="after")
    def _paths_are_absolute(self) -> PartyConfig:
        """The worker runs in its own directory: a relative path would name another file."""
        files = [self.result_file, self.error_file, self.progress_file, *self.candidates]
        files += [f for f in (self.train, self.test, self.state) if f is not None]
        relative = [f for f in files if not os.path.isabs(f)]
        if relative:
            raise ValueError(
                f"worker paths must be absolute (resolve them where the user gave them): {relative}"
            )
        return self


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


def _report(config: PartyConfig, event: str, **fields: object) -> None:
    """Append one event to the progress file: ``joined`` (with ``total``), ``started`` (candidate
    ``index`` enters the MPC: from here on its value may be revealed) and ``result``."""
    with open(config.progress_file, "a") as f:
        f.write(json.dumps({"role": config.role, "event": event, **fields}) + "\n")


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


def job_digest(job: JobSpec) -> bytes:
    """SHA-256 of the agreed job; bound into every link's handshake (tampering fails it)."""
    return hashlib.sha256(job.model_dump_json().encode()).digest()


def _psk(config: PartyConfig, link: str) -> bytes:
    value = None if config.keys is None else getattr(config.keys, link)
    if value is None:
        raise ConfigError(
            f"the {config.role}'s worker has no pre-shared key for the {link.replace('_', '-')} "
            "link; the secure transport needs the session keys agreed over REST"
        )
    return bytes.fromhex(value)


def _connect_to_model_owner(config: PartyConfig, link: str) -> Channel:
    """The data owner's or the dealer's authenticated channel to the model owner's worker."""
    from common import transport

    host, port = transport.parse_rendezvous(config.rendezvous)
    return transport.connect(
        config.role,
        host,
        port,
        _psk(config, link),
        session_id=config.session_id,
        job_digest=job_digest(config.job),
        window=config.timeout_seconds,
    )


def _relayed_link(config: PartyConfig, via: Channel) -> Any:
    """The data owner ↔ dealer key schedule, agreed through the model owner's relay."""
    from common import transport

    return transport.relayed_key(
        config.role,
        via,
        _psk(config, "do_dealer"),
        session_id=config.session_id,
        job_digest=job_digest(config.job),
    )


def run_dealer(config: PartyConfig) -> dict[str, object]:
    """Serve Beaver triples until the model owner's worker says it is done."""
    if config.job.transport == "gloo":
        return _run_gloo_dealer(config)
    from common.secure_mpc import Dealer, StreamRng, close_channels, serve_dealer

    mo = _connect_to_model_owner(config, "mo_dealer")
    try:
        link = _relayed_link(config, mo)
        dealer = Dealer(StreamRng(mo.derive("triples")), StreamRng(link.derive("derived/triples")))
        requests = serve_dealer(mo, dealer)
    finally:
        close_channels(mo)
    return {
        "role": "dealer",
        "requests": requests,
        "bytes_written": mo.bytes_sent,
    }


def _run_gloo_dealer(config: PartyConfig) -> dict[str, object]:
    """CrypTen's own dealer over unprotected gloo (for measuring the hardening's cost only)."""
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
    if job.v_bound is not None:
        largest = float(np.linalg.norm(state.v, axis=0).max())
        if largest > job.v_bound:
            raise ConfigError(
                f"the model's max_j ‖v_j‖ is {largest:g}, above the agreed bound v_bound "
                f"{job.v_bound:g}: the noise would be too small for the promised ε"
            )
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


@contextlib.contextmanager
def _gloo_session(config: PartyConfig) -> Iterator[object]:
    """CrypTen's own transport: torch.distributed over gloo, unauthenticated and unencrypted."""
    from common.compat import import_crypten, rendezvous_timeout

    crypten = import_crypten()
    try:
        with rendezvous_timeout(config.timeout_seconds):
            crypten.init()
    except Exception as exc:
        raise PeerTimeout(
            f"the parties did not all join the rendezvous at {config.rendezvous} within "
            f"{config.timeout_seconds:g} s ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        yield crypten.communicator.get()
    finally:
        crypten.uninit()


@contextlib.contextmanager
def _secure_session(config: PartyConfig) -> Iterator[object]:
    """Authenticated, encrypted channels (:mod:`common.transport`) and CrypTen swapped onto them."""
    from common import transport
    from common.secure_mpc import (
        DealerProvider,
        SecureCommunicator,
        StreamRng,
        close_channels,
        installed,
        owner_generators,
    )

    job = config.job
    host, port = transport.parse_rendezvous(config.rendezvous)
    digest = job_digest(job)
    with_dealer = job.provider == "TTP"
    dealer: transport.Channel | None = None
    if config.role == "model_owner":
        psks = {"data_owner": _psk(config, "mo_do")}
        if with_dealer:
            psks["dealer"] = _psk(config, "mo_dealer")
        channels = transport.accept_peers(
            host,
            port,
            psks,
            session_id=config.session_id,
            job_digest=digest,
            window=config.timeout_seconds,
        )
        peer, dealer = channels["data_owner"], channels.get("dealer")
    else:
        peer = _connect_to_model_owner(config, "mo_do")
    try:
        rank = RANKS[config.role]
        provider: DealerProvider | None = None
        if with_dealer and dealer is not None:
            transport.relay_handshake(peer, dealer)
            provider = DealerProvider(rank, StreamRng(dealer.derive("triples")), dealer)
        elif with_dealer:
            link = _relayed_link(config, peer)
            provider = DealerProvider(rank, StreamRng(link.derive("derived/triples")), None)
        comm = SecureCommunicator(rank, peer, dealer)
        with installed(comm, owner_generators(rank, peer), provider):
            yield comm
            if provider is not None:
                provider.finish()
            comm.barrier()  # neither side closes while the other still reads
    finally:
        close_channels(peer, dealer)


def run_party(config: PartyConfig) -> dict[str, object]:
    """Model owner or data owner: load own inputs, rendezvous, appraise every candidate."""
    from common.mpc_appraisal import Shapes, appraise_candidate

    job = config.job
    mo = _load_model_owner(config) if config.role == "model_owner" else None
    do = _load_data_owner(config) if config.role == "data_owner" else None
    session = _gloo_session if job.transport == "gloo" else _secure_session
    results: list[dict[str, object]] = []
    with session(config) as comm:

        def written_now() -> int:
            """Bytes this worker sent: its channels' count, or (gloo) its write system calls."""
            channels = getattr(comm, "channels", None)
            return bytes_written() if channels is None else sum(c.bytes_sent for c in channels)

        _report(config, "joined", total=len(job.candidates))
        for index, meta in enumerate(job.candidates):
            _report(config, "started", index=index)
            comm.reset_communication_stats()  # type: ignore[attr-defined]
            written = written_now()
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
                reveal_to=job.reveal_to,
                noise_epsilon=job.noise_epsilon,
                v_bound=job.v_bound,
            )
            stats = comm.get_communication_stats()  # type: ignore[attr-defined]
            result: dict[str, object] = {
                "candidate": meta.name,
                "score": outcome.score,
                "accept": outcome.accept,
                "seconds": time.perf_counter() - start,
                "crypten_bytes": int(stats["bytes"]),  # CrypTen's count: sent + received
                "rounds": int(stats["rounds"]),
                "bytes_written": written_now() - written,
                # peak resident memory of this party's process so far (Linux reports KiB)
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            results.append(result)
            _report(config, "result", index=index, result=result)
    return {"role": config.role, "results": results}


def check_policy(config: PartyConfig) -> None:
    """Refuse what this party's own configuration does not allow, before any network traffic."""
    job = config.job
    if job.provider == "TFP" and not config.allow_insecure_tfp:
        raise ConfigError(
            "the TFP provider lets the model owner's worker generate every Beaver triple and so "
            "read the data owner's inputs; it is refused unless explicitly allowed "
            "(allow_insecure_tfp, or --insecure-tfp for a local run)"
        )
    if job.provider == "TFP":
        log.warning(
            "INSECURE: the TFP provider lets the model owner's worker generate every Beaver "
            "triple and so read the data owner's secrets; use the dealer (TTP) in any real run"
        )
    if job.transport == "gloo":
        log.warning(
            "INSECURE: the gloo transport sends shares and generator seeds in the clear and "
            "accepts any peer; it exists only to measure the secure transport's cost"
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


def main() -> int:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        print(
            f"{CONFIG_ENV} is not set; this module is started by common.launcher", file=sys.stderr
        )
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
    _set_process_name(config.role)
    limit_threads(config.threads)
    if config.keys is not None:  # the session keys live on in this process's memory only
        Path(path).unlink(missing_ok=True)
    logging.basicConfig(
        level=logging.INFO if os.environ.get("DATA_APPRAISAL_DEBUG") else logging.WARNING,
        format=f"%(asctime)s {config.role} rank={RANKS[config.role]} %(levelname)s %(message)s",
    )
    _exit_with_parent()
    try:
        check_policy(config)
        if config.job.transport == "gloo":
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
