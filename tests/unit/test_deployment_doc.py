"""docs/deployment.md against the code: its commands are valid CLI calls, its settings are real and
load, its ports are the defaults, and it sets exactly what the three-host test
(tests/e2e/test_three_hosts.py) sets, so that the test runs what the guide says."""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from common import cli
from common.cli.serve import SERVICES
from common.ml.examples import ExampleSplit
from model_owner.settings import ModelOwnerSettings

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "deployment.md").read_text()
PREFIXES = {command.prefix: name for name, command in SERVICES.items()}
# NAME=value a line (perhaps commented out), as a shell and systemd's EnvironmentFile read it
ASSIGNMENT = re.compile(r"^#?((?:MODEL_OWNER|DATA_OWNER|DEALER)_[A-Z_]+)=(.*)$", re.MULTILINE)


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE, flags=re.DOTALL)


def commands() -> list[list[str]]:
    """Every `data-appraisal ...` call in the guide's shell blocks, continued lines joined."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip() if " #" in line else line.strip()
            if line.startswith("data-appraisal "):
                out.append(shlex.split(line))
    return out


def settings_in_guide() -> dict[str, dict[str, str]]:
    """Each service's variables as the guide's blocks set them (commented ones included)."""
    out: dict[str, dict[str, str]] = {name: {} for name in SERVICES}
    for block in blocks("bash"):
        for var, raw in ASSIGNMENT.findall(block):
            words = shlex.split(raw)  # what `. file` makes of the value: quotes removed
            assert len(words) == 1, f"docs/deployment.md: {var}={raw} is not one shell word"
            prefix = next(p for p in PREFIXES if var.startswith(p))
            out[PREFIXES[prefix]][var] = words[0]
    return out


def test_every_command_is_a_valid_cli_call() -> None:
    seen = set()
    for words in commands():
        cmd: Any = typer.main.get_command(cli.app)
        path = []
        try:
            ctx = cmd.make_context(words[0], words[1:])
            while hasattr(cmd, "resolve_command"):
                rest = [*ctx._protected_args, *ctx.args]
                if not rest and cmd.invoke_without_command:
                    break
                name, cmd, rest = cmd.resolve_command(ctx, rest)
                path.append(name)
                ctx = cmd.make_context(name, rest, parent=ctx)
        except Exception as exc:
            message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
            raise AssertionError(f"`{shlex.join(words)}`: {message}") from None
        seen.add(" ".join(path))
    expected = {"certs ca", "certs request", "certs sign", "model-owner serve", "appraise"}
    assert expected <= seen, f"the guide lacks {sorted(expected - seen)}"


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_setting_is_real_and_loads(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    command = SERVICES[name]
    settings, _ = command.build({"demo": True})
    cls = type(settings)
    for var in list(os.environ):
        if var.startswith(command.prefix):
            monkeypatch.delenv(var)
    tokens = itertools.count()
    for var, value in settings_in_guide()[name].items():
        field = var.removeprefix(command.prefix).lower()
        assert field in cls.model_fields, f"docs/deployment.md: {var} is not a setting"
        # each "..." a token of its own: a service refuses two equal tokens
        value = re.sub(r"\.\.\.", lambda _: f"token-{next(tokens)}".ljust(40, "t"), value)
        monkeypatch.setenv(var, value)
    loaded = cls()  # JSON maps and lists parse, values validate
    loaded.check_secrets()


def test_ports_are_the_defaults() -> None:
    for name, command in SERVICES.items():
        assert f"port {command.port}" in GUIDE, f"the guide does not give {name}'s port"
    default = ModelOwnerSettings.model_fields["rendezvous_ports"].default
    assert f"(default {default.replace('-', '–')})" in GUIDE


def test_the_three_host_test_sets_what_the_guide_sets(
    tmp_path: Path, digits_split: ExampleSplit
) -> None:
    from tests.e2e.test_three_hosts import configure

    namespaces = {name: f"unused-{name}" for name in SERVICES}
    deployment = configure(tmp_path, digits_split, namespaces, nat=True)
    guide = settings_in_guide()
    for name, host in deployment.hosts.items():
        assert set(host.env) == set(guide[name]), (
            f"{name}: the test sets {sorted(set(host.env) - set(guide[name]))} beyond the guide, "
            f"the guide {sorted(set(guide[name]) - set(host.env))} beyond the test"
        )
    name = deployment.mo.env["MODEL_OWNER_NAME"]
    assert list(json.loads(deployment.do.env["DATA_OWNER_MODEL_OWNERS"])) == [name]
    assert list(json.loads(deployment.dealer.env["DEALER_MODEL_OWNERS"])) == [name]
    # one token per relationship: the model owner's at the data owner is the one the data owner
    # expects from it, and no other token is repeated anywhere
    at_do = json.loads(deployment.mo.env["MODEL_OWNER_DATA_OWNERS"])
    expected = json.loads(deployment.do.env["DATA_OWNER_MODEL_OWNERS"])[name]["token"]
    assert [peer["token"] for peer in at_do.values()] == [expected]
    assert len(set(deployment.tokens.values())) == len(deployment.tokens) == 6
