"""The three workers of the forged-retry attack (tests/integration/test_forged_retry.py).

Run as ``python -m tests.integration.retry_forger CONFIG.json DRAWS.bin MODE``. Each is the real
worker (:func:`common.runtime.worker.main`) of ``CONFIG``'s role with one change. MODE ``retry``:

- the model owner's sends the dealer ``retry`` instead of ``next`` after candidate 0, whose
  truncation checks did not fail (and otherwise goes on as an honest worker: candidate 1 next);
- the data owner's appends to DRAWS.bin every int64 it draws from its triple stream while it
  computes candidate 1.

MODE ``next``:

- the data owner's fails a truncation in the first attempt at candidate 0
  (``tests/integration/truncation_fault.py``), so both owners recompute it;
- the model owner's then sends the dealer ``next`` instead of ``retry`` (and otherwise recomputes
  candidate 0 as an honest worker);
- the data owner's appends to DRAWS.bin every int64 it draws from its triple stream while it
  recomputes candidate 0.

In both, the dealer's appends to DRAWS.bin every int64 it draws from its data-owner stream while it
serves the attempt after the forged decision (its second attempt at a plan: candidate 0's forged
recomputation, or candidate 1's first attempt).

The draws are written as they are made (flushed), so that they survive a party that is ended.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

FORGED_AFTER = 0  # the candidate after which the model owner forges its retry


def _record(draws: Path, wanted: Any) -> None:
    """Append every int64 drawn by a generator for which ``wanted(generator)`` holds."""
    from common.mpc.streams import StreamRng

    out = open(draws, "ab")  # noqa: SIM115 (open for the process's life)
    original = StreamRng.int64

    def int64(self: StreamRng, size: Any) -> Any:
        values = original(self, size)
        if wanted(self):
            out.write(values.numpy().tobytes())
            out.flush()
        return values

    StreamRng.int64 = int64  # type: ignore[method-assign]


def forge(outcome: dict[str, Any]) -> None:
    """The model owner's first decision (``next`` or ``retry``) told to the dealer as the other."""
    from common.mpc.dealer import DealerProvider

    original_decide = DealerProvider._decide

    def decide(self: DealerProvider, fn: str) -> None:
        if self.dealer is not None and "forged" not in outcome:
            outcome["forged"] = {"next": "retry", "retry": "next"}[fn]
            return original_decide(self, outcome["forged"])
        return original_decide(self, fn)

    DealerProvider._decide = decide  # type: ignore[method-assign]


def record_data_owner(draws: Path, mode: str) -> None:
    """The data owner's triple-stream draws for the attempt the model owner lies about: candidate
    1 (MODE retry: both its attempts, if any) or candidate 0's recomputation (MODE next)."""
    from common.mpc.dealer import DealerProvider

    state: dict[str, Any] = {"provider": None}
    original_begin, original_retry = DealerProvider.begin, DealerProvider.retry

    def begin(self: DealerProvider, index: int) -> None:
        original_begin(self, index)
        state["provider"] = self if mode == "retry" and index == FORGED_AFTER + 1 else None

    def retry(self: DealerProvider) -> None:
        original_retry(self)
        if mode == "next":
            state["provider"] = self

    def wanted(generator: Any) -> bool:
        provider = state["provider"]
        return provider is not None and generator is provider.stream

    DealerProvider.begin = begin  # type: ignore[method-assign]
    DealerProvider.retry = retry  # type: ignore[method-assign]
    _record(draws, wanted)


def record_dealer(draws: Path) -> None:
    """The dealer's draws from its data-owner stream while it serves the attempt after the forged
    decision: its second attempt at a plan."""
    from common.mpc.dealer import Dealer

    state: dict[str, Any] = {"begun": 0, "dealer": None}
    original_begin = Dealer.begin

    def begin(self: Dealer, *args: Any) -> None:
        original_begin(self, *args)
        state["begun"] += 1
        # its attempts: candidate 0, then candidate 0 again (forged retry) or 1 (forged next), …
        state["dealer"] = self if state["begun"] == 2 else None

    def wanted(generator: Any) -> bool:
        dealer = state["dealer"]
        return dealer is not None and generator is dealer.streams[1]

    Dealer.begin = begin  # type: ignore[method-assign]
    _record(draws, wanted)


def main(argv: list[str]) -> int:
    from common.runtime import worker
    from common.runtime.config import CONFIG_ENV, PartyConfig

    config_path, draws, mode = argv[1], Path(argv[2]), argv[3]
    config = PartyConfig.model_validate_json(Path(config_path).read_text())
    outcome: dict[str, Any] = {"role": config.role}
    if config.role == "model_owner":
        forge(outcome)
    elif config.role == "data_owner":
        if mode == "next":
            from tests.integration.truncation_fault import inject

            inject(1, outcome)
        record_data_owner(draws, mode)
    else:
        record_dealer(draws)
    os.environ[CONFIG_ENV] = config_path
    try:
        return worker.main()
    finally:
        draws.with_suffix(".json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
