"""One party of the recorder-attack experiment (tests/test_recorder_attack.py), under a recorder.

Run as ``python -m tests.integration.attack_party CONFIG.json`` (gloo) or ``... worker CONFIG
RECORDING ROLE`` from the repository root, one process per party:

* ``"gloo"``: CrypTen's own transport (torch.distributed over gloo, CrypTen's TTP dealer). Before
  ``crypten.init`` the torch.distributed point-to-point and collective functions are wrapped so
  that every tensor that crosses (sent or received) is logged with its direction, op, dtype, shape
  and raw bytes: all the tensors the transport saw.
* ``worker``: this project's real worker (:mod:`common.runtime.worker`, its secure transport and
  dealer), unchanged, with every channel's ``tap`` logging each plaintext message sent or received.

The gloo mode runs a small computation: the data owner (rank 1) secret-shares X, the model owner
(rank 0) secret-shares W, the parties compute X @ W with one Beaver triple and reveal it, and each
owner writes the revealed result (decoded, and its raw int64 ring encoding) to its output file.
The worker mode runs a real influence appraisal whose candidate is the same shape as X.

The recording is JSON lines: ``{"party", "direction", "op", "dtype", "shape", "data"}`` with the raw
bytes base64-encoded; a secure-mode message is logged with op ``"message"`` and dtype ``"bytes"``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import inspect
import json
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

RANKS = {"model_owner": 0, "data_owner": 1, "dealer": 2}
HOST = "127.0.0.1"


# -- the public program and its inputs ----------------------------------------------------------


def make_x(seed: int, shape: list[int]) -> torch.Tensor:
    """The data owner's secret input: uniform in [-4, 4)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=g) * 8 - 4


def make_w(seed: int, shape: list[int]) -> torch.Tensor:
    """The model owner's secret input: uniform in [-1, 1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=g) * 2 - 1


def compute(role: str, config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Share X (src=1) then W (src=0), multiply with a Beaver triple, reveal to both.

    Returns the decoded result and its int64 ring encoding (the value the reveal opened).
    """
    from crypten.mpc.primitives import ArithmeticSharedTensor

    x_shape, w_shape = config["x_shape"], config["w_shape"]
    is_do, is_mo = role == "data_owner", role == "model_owner"
    x_in = make_x(config["x_seed"], x_shape) if is_do else torch.zeros(tuple(x_shape))
    w_in = make_w(config["w_seed"], w_shape) if is_mo else torch.zeros(tuple(w_shape))
    x = ArithmeticSharedTensor(x_in, src=1)
    w = ArithmeticSharedTensor(w_in, src=0)
    z = x.matmul(w)  # Beaver: opens x - a and w - b, then truncates locally (two parties)
    ring = z.reveal()
    return z.encoder.decode(ring), ring


# -- logging ------------------------------------------------------------------------------------


class Recorder:
    """Appends one JSON line per message or tensor to the recording file (thread-safe)."""

    def __init__(self, path: str, party: str):
        self.party = party
        self._file = open(path, "w")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def log(self, direction: str, op: str, dtype: str, shape: list[int], data: bytes) -> None:
        line = json.dumps(
            {
                "party": self.party,
                "direction": direction,
                "op": op,
                "dtype": dtype,
                "shape": shape,
                "data": base64.b64encode(data).decode(),
            }
        )
        with self._lock:
            self._file.write(line + "\n")

    def tensor(self, direction: str, op: str, tensor: torch.Tensor) -> None:
        t = tensor.detach().contiguous().cpu()
        self.log(direction, op, str(t.dtype), list(t.shape), t.numpy().tobytes())

    def tap(self, direction: str, data: bytes) -> None:
        self.log(direction, "message", "bytes", [len(data)], data)

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _Logged:
    """A torch.distributed work handle that logs the received tensor once it has arrived."""

    def __init__(self, work: Any, done: Callable[[], None]):
        self._work = work
        self._done: Callable[[], None] | None = done

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        result = self._work.wait(*args, **kwargs)
        if self._done is not None:
            done, self._done = self._done, None
            done()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._work, name)


def install_recorder(recorder: Recorder) -> None:
    """Wrap torch.distributed's send/isend/recv/irecv/broadcast/all_reduce/reduce.

    CrypTen looks these up on the module at call time, so wrapping the module attributes before
    ``crypten.init`` covers the seeds' exchange, the dealer's traffic and every share.
    """
    import torch.distributed as dist

    def wrap(name: str) -> None:
        original = getattr(dist, name)
        signature = inspect.signature(original)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            params = bound.arguments
            tensor: torch.Tensor = params["tensor"]
            rank = dist.get_rank()
            sends = name in ("send", "isend", "all_reduce", "reduce") or (
                name == "broadcast" and params["src"] == rank
            )
            receives = name in ("recv", "irecv", "all_reduce") or (
                (name == "broadcast" and params["src"] != rank)
                or (name == "reduce" and params["dst"] == rank)
            )
            if sends:
                recorder.tensor("sent", name, tensor)
            result = original(*args, **kwargs)

            def arrived() -> None:
                recorder.tensor("received", name, tensor)

            if not receives:
                return result
            if result is None or name == "recv":  # completed synchronously
                arrived()
                return result
            return _Logged(result, arrived)

        setattr(dist, name, wrapper)

    for name in ("send", "isend", "recv", "irecv", "broadcast", "all_reduce", "reduce"):
        wrap(name)


# -- the two modes ------------------------------------------------------------------------------


def _write_output(config: dict[str, Any], payload: dict[str, Any]) -> None:
    path = Path(config["output"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _result_payload(role: str, plain: torch.Tensor, ring: torch.Tensor) -> dict[str, Any]:
    return {
        "role": role,
        "result": plain.double().tolist(),
        "result_ring": base64.b64encode(ring.contiguous().numpy().tobytes()).decode(),
    }


@contextlib.contextmanager
def rendezvous_timeout(seconds: float) -> Iterator[None]:
    """torch.distributed waits 30 minutes for a rendezvous by default, and CrypTen calls
    ``init_process_group`` without a timeout: inject a deadline into it (and into every later
    collective of the group)."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=seconds)
    originals = {name: getattr(dist, name) for name in ("init_process_group", "new_group")}
    for name, original in originals.items():
        setattr(dist, name, functools.partial(original, timeout=timeout))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(dist, name, original)


def run_gloo(config: dict[str, Any], recorder: Recorder) -> dict[str, Any]:
    from common.mpc.compat import import_crypten

    role = config["role"]
    os.environ.update(
        {
            "DISTRIBUTED_BACKEND": "gloo",
            "RENDEZVOUS": f"tcp://{HOST}:{config['port']}",
            "WORLD_SIZE": "2",
            "RANK": str(RANKS[role]),
        }
    )
    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    install_recorder(recorder)
    if role == "dealer":
        # as common.worker's gloo dealer: seed torch's global RNG (which draws the parties'
        # generator seeds) from the OS
        torch.manual_seed(secrets.randbits(63))
        with rendezvous_timeout(config["timeout"]):
            crypten.mpc.provider.ttp_provider.TTPServer()  # serves until the model owner is done
        return {"role": role}
    with rendezvous_timeout(config["timeout"]):
        crypten.init()
    try:
        plain, ring = compute(role, config)
        cpu = torch.device("cpu")
        ttp = crypten.mpc.provider.ttp_provider.TTPClient.get().generator
        payload = _result_payload(role, plain, ring)
        # ground truth for the test: the seeds the recorder should have given away
        payload["seeds"] = {
            "prev": crypten.generators["prev"][cpu].initial_seed(),
            "next": crypten.generators["next"][cpu].initial_seed(),
            "ttp": ttp.initial_seed(),
        }
    finally:
        crypten.uninit()  # the model owner tells the dealer to stop
    return payload


def run_worker(config_path: str, recording: str, role: str) -> int:
    """This project's real worker (:func:`common.runtime.worker.main`), its every channel tapped."""
    from common.mpc import transport
    from common.runtime import worker
    from common.runtime.config import CONFIG_ENV

    recorder = Recorder(recording, role)
    original = transport.Channel.__init__

    def tapped(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["tap"] = recorder.tap
        original(self, *args, **kwargs)

    transport.Channel.__init__ = tapped  # type: ignore[method-assign]
    os.environ[CONFIG_ENV] = config_path
    try:
        return worker.main()
    finally:
        recorder.close()


def main(argv: list[str]) -> int:
    if len(argv) == 5 and argv[1] == "worker":  # worker CONFIG RECORDING ROLE
        return run_worker(argv[2], argv[3], argv[4])
    if len(argv) != 2:
        print(
            "usage: python -m tests.integration.attack_party CONFIG.json | worker CONFIG "
            "RECORDING ROLE",
            file=sys.stderr,
        )
        return 2
    config = json.loads(Path(argv[1]).read_text())
    from common.runtime.worker import _exit_with_parent, _set_process_name

    _exit_with_parent()  # no orphan keeps a port if the test that started it dies
    _set_process_name(config["role"])  # conftest's leftover check knows workers by this name
    recorder = Recorder(config["recording"], config["role"])
    try:
        payload = run_gloo(config, recorder)
    finally:
        recorder.close()
    _write_output(config, payload)
    return 0


if __name__ == "__main__":
    if not __package__:  # run as a file: make the repository's packages importable
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv))
