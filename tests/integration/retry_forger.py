"""The three workers of the forged-retry attack (tests/integration/test_forged_retry.py).

Run as ``python -m tests.integration.retry_forger CONFIG.json DRAWS.bin``. Each is the real worker
(:func:`common.runtime.worker.main`) of ``CONFIG``'s role with one change:

- the model owner's sends the dealer ``retry`` instead of ``next`` after candidate 0, whose
  truncation checks did not fail (and otherwise goes on as an honest worker: candidate 1 next);
- the data owner's appends to DRAWS.bin every int64 it draws from its triple stream while it
  computes candidate 1;
- the dealer's appends to DRAWS.bin every int64 it draws from its data-owner stream while it serves
  the forged recomputation of candidate 0 (its second attempt at a candidate's plan).

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
    from common.mpc.dealer import DealerProvider

    original_end = DealerProvider.end
    ended = {"count": 0}

    def end(self: DealerProvider) -> None:
        if self.dealer is not None and ended["count"] == FORGED_AFTER:
            self._used_whole_plan()
            self._decide("retry")  # without cause: the candidate's checks passed
            outcome["forged"] = True
        else:
            original_end(self)
        ended["count"] += 1

    DealerProvider.end = end  # type: ignore[method-assign]


def record_data_owner(draws: Path) -> None:
    """The data owner's triple-stream draws for candidate 1 (both attempts, if any)."""
    from common.mpc.dealer import DealerProvider

    state: dict[str, Any] = {"provider": None}
    original_begin = DealerProvider.begin

    def begin(self: DealerProvider, index: int) -> None:
        original_begin(self, index)
        state["provider"] = self if index == FORGED_AFTER + 1 else None

    def wanted(generator: Any) -> bool:
        provider = state["provider"]
        return provider is not None and generator is provider.stream

    DealerProvider.begin = begin  # type: ignore[method-assign]
    _record(draws, wanted)


def record_dealer(draws: Path) -> None:
    """The dealer's draws from its data-owner stream while it serves the forged recomputation."""
    from common.mpc.dealer import Dealer

    state: dict[str, Any] = {"begun": 0, "dealer": None}
    original_begin = Dealer.begin

    def begin(self: Dealer, *args: Any) -> None:
        original_begin(self, *args)
        state["begun"] += 1
        # the dealer's attempts: candidate 0, then (forged) candidate 0 again, then candidate 1
        state["dealer"] = self if state["begun"] == 2 else None

    def wanted(generator: Any) -> bool:
        dealer = state["dealer"]
        return dealer is not None and generator is dealer.streams[1]

    Dealer.begin = begin  # type: ignore[method-assign]
    _record(draws, wanted)


def main(argv: list[str]) -> int:
    from common.runtime import worker
    from common.runtime.config import CONFIG_ENV, PartyConfig

    config_path, draws = argv[1], Path(argv[2])
    config = PartyConfig.model_validate_json(Path(config_path).read_text())
    outcome: dict[str, Any] = {"role": config.role}
    if config.role == "model_owner":
        forge(outcome)
    elif config.role == "data_owner":
        record_data_owner(draws)
    else:
        record_dealer(draws)
    os.environ[CONFIG_ENV] = config_path
    try:
        return worker.main()
    finally:
        draws.with_suffix(".json").write_text(json.dumps(outcome))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
