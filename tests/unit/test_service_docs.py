"""The README and docs/api.md must describe the services as the code builds them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from common.ml.examples import ExampleSplit
from common.web.routes import openapi_schema
from data_owner.app import create_app as data_owner_app
from data_owner.settings import DataOwnerSettings
from dealer.app import create_app as dealer_app
from dealer.settings import DealerSettings
from model_owner.app import create_app as model_owner_app
from model_owner.settings import ModelOwnerSettings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
API = (ROOT / "docs" / "api.md").read_text()


@pytest.fixture(scope="module")
def schemas(
    tmp_path_factory: pytest.TempPathFactory, digits_split: ExampleSplit
) -> dict[str, dict]:
    tmp = tmp_path_factory.mktemp("docs")
    apps = {
        "model owner": model_owner_app(
            ModelOwnerSettings(
                demo=True, state_dir=tmp / "mo", train=digits_split.train, test=digits_split.test
            )
        ),
        "data owner": data_owner_app(
            DataOwnerSettings(demo=True, state_dir=tmp / "do", data_dir=tmp / "data")
        ),
        "dealer": dealer_app(DealerSettings(demo=True, state_dir=tmp / "dealer")),
    }
    return {name: openapi_schema(app) for name, app in apps.items()}


def test_every_route_is_documented_in_api_md(schemas: dict[str, dict]) -> None:
    documented = set(re.findall(r"`(GET|POST|PUT|DELETE|PATCH) (/v1/[^`?\s]*)", API))
    for name, schema in schemas.items():
        for path, operations in schema["paths"].items():
            for method in operations:
                assert (method.upper(), path) in documented, f"{name}: {method.upper()} {path}"
    every_path = {p for s in schemas.values() for p in s["paths"]}
    for _, path in documented:
        assert path in every_path, f"docs/api.md documents {path}, which no service serves"


def test_every_route_documents_its_errors(schemas: dict[str, dict]) -> None:
    for name, schema in schemas.items():
        for path, operations in schema["paths"].items():
            for method, op in operations.items():
                if path == "/v1/health":
                    continue
                assert "401" in op["responses"], f"{name} {method} {path}"
                assert op.get("security"), f"{name} {method} {path} has no bearer scheme"


@pytest.mark.parametrize(
    ("settings", "prefix"),
    [
        (ModelOwnerSettings, "MODEL_OWNER_"),
        (DataOwnerSettings, "DATA_OWNER_"),
        (DealerSettings, "DEALER_"),
    ],
)
def test_every_setting_is_in_the_readme(settings: type[BaseSettings], prefix: str) -> None:
    section = README[README.index("### Service settings") :]
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    for field in settings.model_fields:
        assert field.upper() in names, f"{prefix}{field.upper()} is not in the README"
    assert settings.model_config.get("env_prefix") == prefix


def test_every_command_is_in_the_readme() -> None:
    import typer.main

    from common.cli import app

    group = typer.main.get_command(app)
    for name in group.commands:  # type: ignore[attr-defined]
        assert f"data-appraisal {name}" in README, f"`data-appraisal {name}` is not in the README"
