"""docker-compose.yml run for real: ``make compose-test`` (tests/e2e/compose_demo.py) where a Docker
engine answers; skipped, saying so, where none does (CI has none: there tests/unit/test_compose.py
checks the file statically)."""

from __future__ import annotations

import pytest

from tests.e2e.compose_demo import Unavailable, compose_command, main


def test_compose_builds_runs_and_appraises_the_demo() -> None:
    try:
        compose_command()
    except Unavailable as exc:
        pytest.skip(f"no Docker engine or Compose here ({exc}); `make compose-test` needs one")
    assert main([]) == 0, "make compose-test failed: see the captured output"
