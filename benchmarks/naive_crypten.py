"""The user's alternative, for comparison: the appraisal written as a plain CrypTen script.

This is what a CrypTen user would write without this project: three processes started by a
launcher of their own, CrypTen's own communicator (torch.distributed over gloo, TCP on
127.0.0.1), CrypTen's TTP provider with its ``TTPServer`` as the dealer, each owner's data entered
with ``crypten.cryptensor(..., src=rank)``, and CrypTen's own ``matmul``, ``softmax``,
``log_softmax`` and arithmetic. It computes the same statistics as this project on the same files:

- influence: S = Σ_a (softmax(X θ̂) − Y) ⊙ (X v), score −S/n (X [θ̂ | v] as one product);
- gradient norm: G = Xᵀ (softmax(X θ̂) − Y), score ‖G‖ (‖G‖² is revealed and its square root
  taken in the clear: the same information as the score, without an iterative ``sqrt`` under MPC);
- fine-tuning: T full-batch gradient steps θ ← θ − η (G/N + (2λ/N) θ) on D_tr ∪ D_a from θ̂, then
  the mean test cross-entropy, revealed; the score is that minus the model owner's clear test loss
  at θ̂.

Rank 0 is the model owner (θ̂ and v, computed in the clear from its train and test files exactly
as this project's model owner does; fine-tuning also enters D_tr and D_te), rank 1 the data owner
(the candidate), rank 2 CrypTen's TTP server. Nothing here is hardened: gloo sends shares in the
clear. It exists to be measured: time from after the rendezvous to the reveal, CrypTen's own
communication statistics (the data owner's count is the traffic between the owners, since the
TTP talks only to rank 0 and seeds rank 1's generator; the TTP server's count is the dealer's),
and each process's peak RSS.

Usage: ``python benchmarks/naive_crypten.py --method influence --train T --test E --candidate C``
(prints one JSON object); :func:`run_naive` from Python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_OWNER, DATA_OWNER, DEALER = 0, 1, 2
METHODS = ("influence", "gradient-norm", "finetune")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_hot(y: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(y), k))
    out[np.arange(len(y)), y] = 1.0
    return out


def _party(config: dict[str, Any]) -> dict[str, Any]:
    """One CrypTen process: rank 0 or 1 computes, rank 2 serves as the TTP until rank 0 ends."""
    import torch

    from common.ml import model
    from common.ml.data import load_dataset

    rank = int(config["rank"])
    os.environ.update(
        {
            "DISTRIBUTED_BACKEND": "gloo",
            "RENDEZVOUS": config["rendezvous"],
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "GLOO_SOCKET_IFNAME": "lo",
        }
    )
    torch.set_num_threads(1)
    from common.mpc.compat import import_crypten

    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True  # CrypTen counts rounds and bytes only when verbose

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    if rank == DEALER:
        crypten.mpc.provider.ttp_provider.TTPServer()  # returns when rank 0 calls uninit
        stats = crypten.communicator.get().get_communication_stats()
        return {"rank": rank, "bytes": int(stats["bytes"]), "peak_rss_mb": peak_mb()}

    method, shape = config["method"], config["shape"]
    n, d, k, n_tr, n_te = (int(shape[key]) for key in ("n", "d", "k", "n_train", "n_test"))
    steps, lr, l2 = int(config["steps"]), float(config["lr"]), float(config["l2"])
    mine: dict[str, np.ndarray] = {}
    test_loss = 0.0
    if rank == MODEL_OWNER:  # θ̂ and v in the clear, as this project's model owner computes them
        train, test = load_dataset(config["train"]), load_dataset(config["test"])
        state = model.prepare_model_owner(train.X, train.y, test.X, test.y, n_classes=k, l2=l2)
        mine = {"theta": state.theta, "v": state.v, "test_loss": np.array(state.test_loss)}
        mine.update(Xtr=model.add_bias(train.X), Ytr=_one_hot(train.y, k))
        mine.update(Xte=model.add_bias(test.X), Yte=_one_hot(test.y, k))
        test_loss = state.test_loss
    else:
        cand = load_dataset(config["candidate"])
        mine = {"X": model.add_bias(cand.X), "Y": _one_hot(cand.y, k)}

    def enter(name: str, owner: int, rows: int, cols: int) -> Any:
        """``name`` secret-shared by its owner; the other party gives a placeholder of its shape."""
        value = mine[name] if rank == owner else np.zeros((rows, cols))
        return crypten.cryptensor(torch.from_numpy(value).float(), src=owner)

    crypten.init()
    try:
        comm = crypten.communicator.get()
        comm.reset_communication_stats()
        start = time.perf_counter()
        X, Y = enter("X", DATA_OWNER, n, d + 1), enter("Y", DATA_OWNER, n, k)
        theta = enter("theta", MODEL_OWNER, d + 1, k)
        if method == "influence":
            # the one optimisation a CrypTen user would make: X θ and X v as one product, so that
            # X's Beaver product opens X − A once, not twice
            v = enter("v", MODEL_OWNER, d + 1, k)
            Z = X.matmul(crypten.cat([theta, v], dim=1))
            R = Z[:, :k].softmax(1) - Y
            S = (R * Z[:, k:]).sum()
            score = -float(S.get_plain_text().item()) / n
        elif method == "gradient-norm":
            R = X.matmul(theta).softmax(1) - Y
            G = X.t().matmul(R)
            score = float(np.sqrt(max(float((G * G).sum().get_plain_text().item()), 0.0)))
        else:
            Xtr, Ytr = enter("Xtr", MODEL_OWNER, n_tr, d + 1), enter("Ytr", MODEL_OWNER, n_tr, k)
            Xte, Yte = enter("Xte", MODEL_OWNER, n_te, d + 1), enter("Yte", MODEL_OWNER, n_te, k)
            Xall, Yall = crypten.cat([Xtr, X]), crypten.cat([Ytr, Y])
            N = n_tr + n
            for _ in range(steps):
                R = Xall.matmul(theta).softmax(1) - Yall
                G = Xall.t().matmul(R)
                theta = theta - (G / N + theta * (2.0 * l2 / N)) * lr
            loss = -(Xte.matmul(theta).log_softmax(1) * Yte).sum() / n_te
            score = float(loss.get_plain_text().item()) - test_loss
        seconds = time.perf_counter() - start
        stats = comm.get_communication_stats()
    finally:
        crypten.uninit()  # rank 0's ends the TTP server
    return {
        "rank": rank,
        "score": score,
        "seconds": seconds,
        "rounds": int(stats["rounds"]),
        "bytes": int(stats["bytes"]),
        "peak_rss_mb": peak_mb(),
    }


def run_naive(
    method: str,
    *,
    train: str | Path,
    test: str | Path,
    candidate: str | Path,
    steps: int = 16,
    lr: float = 0.1,
    l2: float = 1.0,
    timeout: float = 900.0,
) -> dict[str, Any]:
    """Run the naive CrypTen appraisal in three fresh processes; what each reported, and the wall
    time of the whole run (process start-up, imports, loading, θ̂, rendezvous included).

    Raises RuntimeError (with the processes' output) if any party fails or the run exceeds
    ``timeout`` seconds; every process started here is killed before returning.
    """
    from common.ml.data import load_dataset

    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    paths = {name: str(Path(p).resolve()) for name, p in (("train", train), ("test", test))}
    paths["candidate"] = str(Path(candidate).resolve())
    cand, tr, te = (load_dataset(paths[name]) for name in ("candidate", "train", "test"))
    k = int(max(tr.y.max(), te.y.max())) + 1
    shape = {"n": cand.n_samples, "d": cand.n_features, "k": k}
    shape.update(n_train=tr.n_samples, n_test=te.n_samples)
    rendezvous = f"tcp://127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="naive-crypten-") as tmp:
        work = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for rank in (MODEL_OWNER, DATA_OWNER, DEALER):
                config = {"rank": rank, "rendezvous": rendezvous, "method": method}
                config.update(shape=shape, steps=steps, lr=lr, l2=l2, **paths)
                (work / f"{rank}.json").write_text(json.dumps(config))
                with open(work / f"{rank}.log", "wb") as log:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, __file__, "--party", str(work / f"{rank}.json")],
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            end = time.monotonic() + timeout
            for p in procs:
                p.wait(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"naive CrypTen {method}: no result within {timeout:.0f} s"
            ) from None
        finally:
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        wall = time.perf_counter() - start
        failed = [r for r, p in enumerate(procs) if p.returncode != 0]
        if failed:
            logs = "\n".join(
                f"--- rank {r}:\n{(work / f'{r}.log').read_text(errors='replace')[-3000:]}"
                for r in failed
            )
            raise RuntimeError(f"naive CrypTen {method}: ranks {failed} failed\n{logs}")
        out = {r: json.loads((work / f"{r}.out.json").read_text()) for r in range(3)}
    mo, do, ttp = out[MODEL_OWNER], out[DATA_OWNER], out[DEALER]
    return {
        "method": method,
        "score": mo["score"],
        "mpc_seconds": mo["seconds"],
        "wall_seconds": wall,
        "rounds": do["rounds"],
        "bytes_between_owners": do["bytes"],
        "dealer_bytes": ttp["bytes"],
        "model_owner_bytes": mo["bytes"],
        "peak_rss_mb": mo["peak_rss_mb"],
        "data_owner_peak_rss_mb": do["peak_rss_mb"],
        "dealer_peak_rss_mb": ttp["peak_rss_mb"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--party", type=Path, help=argparse.SUPPRESS)  # a launched process
    parser.add_argument("--method", choices=METHODS, default="influence")
    parser.add_argument("--train", type=Path)
    parser.add_argument("--test", type=Path)
    parser.add_argument("--candidate", type=Path)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args(argv)
    if args.party is not None:
        config = json.loads(args.party.read_text())
        result = _party(config)
        args.party.with_suffix(".out.json").write_text(json.dumps(result))
        return
    if args.train is None or args.test is None or args.candidate is None:
        parser.error("give --train, --test and --candidate")
    result = run_naive(
        args.method, train=args.train, test=args.test, candidate=args.candidate, steps=args.steps
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
