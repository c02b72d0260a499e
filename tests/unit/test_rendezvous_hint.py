"""A session that expires at the rendezvous says what to check, naming the address and the setting
(the supervisor's reason; tests/e2e/test_three_hosts.py meets it across real hosts)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from common.runtime.supervisor import rendezvous_hint


@pytest.mark.parametrize(
    ("role", "rendezvous", "expected"),
    [
        (
            "model_owner",
            "tcp://127.0.0.1:29500",
            "workers on other hosts cannot reach: if they run elsewhere",
        ),
        (
            "data_owner",
            "tcp://127.0.0.1:29500",
            "unless it runs on this host, this worker reached its own host",
        ),
        (
            "dealer",
            "tcp://localhost:29500",
            "unless it runs on this host, this worker reached its own host",
        ),
        ("data_owner", "tcp://mo.example.org:29500", "MODEL_OWNER_RENDEZVOUS_PORTS open"),
    ],
)
def test_the_hint_names_the_address_and_what_to_set(
    role: str, rendezvous: str, expected: str
) -> None:
    hint = rendezvous_hint(SimpleNamespace(role=role, rendezvous=rendezvous))  # type: ignore[arg-type]
    assert expected in hint
    assert rendezvous.removeprefix("tcp://") in hint
    assert "MODEL_OWNER_ADVERTISE_HOST" in hint
