"""A data owner's worker whose truncations fail on purpose (tests/integration/test_truncation_retry.py).

Run as ``python -m tests.integration.truncation_fault CONFIG.json OUTCOME.json FAILURES``. It is the
real data owner's worker (:func:`common.runtime.worker.main`) with one change: in each of the first
``FAILURES`` attempts at a candidate, the second truncation it checks gets 2⁶⁴/D added to one
element of its share, exactly what a failed local truncation does to the result. It writes the
attempts it saw, the failures it injected and its noise draws to OUTCOME.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

TARGET = 1  # which checked truncation of an attempt fails (0-based)


def inject(failures: int, outcome: dict[str, Any]) -> None:
    """Make the second checked truncation of each of the first ``failures`` attempts of the run
    fail; count the attempts, the failures injected and the noise draws in ``outcome``."""
    from common.mpc import appraisal, truncation

    outcome.setdefault("attempts", 0)
    outcome.setdefault("injected", 0)
    original_enter, original_record = truncation.Ledger.__enter__, truncation.Ledger.record

    def enter(self: truncation.Ledger) -> truncation.Ledger:
        if not self.planning:
            self.attempt = outcome["attempts"]  # type: ignore[attr-defined]
            outcome["attempts"] += 1
        return original_enter(self)

    def record(self: truncation.Ledger, share: Any, divisor: int) -> None:
        due = not self.planning and self.attempt < failures  # type: ignore[attr-defined]
        if due and len(self.sites) == TARGET:
            share.view(-1)[0] += round(2.0**64 / divisor)  # wraps like the ring
            outcome["injected"] += 1
        original_record(self, share, divisor)

    draw = appraisal.laplace

    def laplace(scale: float) -> float:
        outcome["noise_draws"] = outcome.get("noise_draws", 0) + 1
        return draw(scale)

    appraisal.laplace = laplace  # type: ignore[assignment]
    truncation.Ledger.__enter__ = enter  # type: ignore[method-assign]
    truncation.Ledger.record = record  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    from common.runtime import worker
    from common.runtime.config import CONFIG_ENV

    config_path, outcome_path, failures = argv[1], Path(argv[2]), int(argv[3])
    outcome: dict[str, Any] = {"attempts": 0, "injected": 0}
    inject(failures, outcome)
    os.environ[CONFIG_ENV] = config_path
    try:
        return worker.main()
    finally:
        outcome_path.write_text(json.dumps(outcome))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
