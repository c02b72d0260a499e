"""A deviating model owner's worker (finding 3 of issue 12): it asks the dealer for more.

Run as ``python -m tests.integration.dealer_attacker CONFIG.json OUTCOME.json WHEN``. It is the real
model owner's worker (:func:`common.runtime.worker.main`) with one change: at ``WHEN`` (``start``:
before its first correlated value; ``end``: after its last, instead of ``done``) it sends the
dealer the request that used to hand over the data owner's triple stream, one "additive matmul"
of size [1, 0] × [0, M], and reads whatever comes back. It writes what it got to OUTCOME.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

M = 4096
REQUEST = {"fn": "additive", "op": "matmul", "sizes": [[1, 0], [0, M]]}


def main(argv: list[str]) -> int:
    from common.mpc.dealer import DealerProvider
    from common.runtime import worker
    from common.runtime.config import CONFIG_ENV

    config_path, outcome_path, when = argv[1], Path(argv[2]), argv[3]
    outcome: dict[str, Any] = {"when": when}

    def ask(provider: DealerProvider) -> None:
        assert provider.dealer is not None
        before = provider.dealer.bytes_received
        provider.dealer.wait(provider.dealer.send(json.dumps(REQUEST).encode()))
        outcome["asked"] = True
        if when == "start":
            return  # carry on as if nothing happened; the pushed values are the plan's
        try:
            answer = provider.dealer.recv()
            outcome["answer_bytes"] = len(answer)
        except Exception as exc:  # the dealer closed the link: nothing came back
            outcome["refused"] = f"{type(exc).__name__}: {exc}"
        outcome["bytes_after_request"] = provider.dealer.bytes_received - before

    original_begin, original_finish = DealerProvider.begin, DealerProvider.finish

    def begin(self: DealerProvider, index: int) -> None:
        original_begin(self, index)
        if when == "start" and self.dealer is not None and "asked" not in outcome:
            ask(self)

    def finish(self: DealerProvider) -> None:
        outcome["values_used"] = self._next
        if self.dealer is None:
            return original_finish(self)
        if when == "end":
            ask(self)
        else:
            original_finish(self)
        outcome_path.write_text(json.dumps(outcome))
        return None

    DealerProvider.begin = begin  # type: ignore[method-assign]
    DealerProvider.finish = finish  # type: ignore[method-assign]
    os.environ[CONFIG_ENV] = config_path
    try:
        return worker.main()
    finally:
        if not outcome_path.exists():
            outcome_path.write_text(json.dumps(outcome))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
