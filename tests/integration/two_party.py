"""The owners' two processes for the MPC harness tests: a secure channel and CrypTen on it.

Tests of a protocol piece (the comparison, the reused openings, the truncation checks) run it on
two real processes over TCP without the workers' configuration: :func:`run_pair` forks them, each
calls ``party(rank, session, out)`` inside :func:`secure_pair`, and the results they put on
``out`` come back as ``{rank: result}``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

from common.runtime.supervisor import free_port

SESSION, DIGEST = "harness", b"\1" * 32


@contextlib.contextmanager
def secure_pair(rank: int, port: int, psk: bytes, provider: Any = None) -> Iterator[Any]:
    """Rank 0 listens, rank 1 connects; CrypTen runs on that channel (with ``provider``, or the
    configured one) within the block, which gets the communicator."""
    from common.mpc import transport
    from common.mpc.communicator import SecureCommunicator, close_channels, installed
    from common.mpc.streams import owner_generators

    if rank == 0:
        peer = transport.accept_peers(
            "127.0.0.1", port, {"data_owner": psk}, session_id=SESSION, job_digest=DIGEST, window=20
        )["data_owner"]
    else:
        peer = transport.connect(
            "data_owner", "127.0.0.1", port, psk, session_id=SESSION, job_digest=DIGEST, window=20
        )
    try:
        comm = SecureCommunicator(rank, peer)
        with installed(comm, owner_generators(rank, peer), provider):
            yield comm
    finally:
        close_channels(peer)


Party = Callable[[int, Callable[..., Any], "multiprocessing.Queue[Any]"], None]


def run_pair(party: Party, timeout: float = 120) -> dict[int, Any]:
    """Fork the two owners; each runs ``party(rank, pair, out)`` with ``pair(provider=None)`` its
    :func:`secure_pair` and puts ``(rank, result)`` on ``out``. Both must exit cleanly."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[Any] = ctx.Queue()
    port, psk = free_port(), os.urandom(32)

    def pair_of(rank: int) -> Callable[..., Any]:
        return lambda provider=None: secure_pair(rank, port, psk, provider)

    def child(rank: int) -> None:
        import torch

        # A forked child must not enter an OpenMP parallel region once the parent (pytest) has
        # started OpenMP's threads: libgomp's pool does not survive fork, and the child hangs in
        # its first parallel torch operation. One thread, as a worker runs by default.
        torch.set_num_threads(1)
        party(rank, pair_of(rank), out)

    parties = [ctx.Process(target=child, args=(r,)) for r in (0, 1)]
    for p in parties:
        p.start()
    try:
        results = dict(out.get(timeout=timeout) for _ in parties)
    finally:
        for p in parties:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in parties] == [0, 0]
    return results
