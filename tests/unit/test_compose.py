"""docker-compose.yml, .env.example and the Dockerfile, checked against the CLI and the settings.

Where Compose is installed, ``docker compose config`` (or v1's ``docker-compose config``) itself
validates the file and its substitutions; ``make compose-test`` (tests/e2e/test_compose_demo.py)
runs it for real where a Docker engine answers. CI has neither, so these checks read the files and
hold them to what the code does: every command is a valid ``data-appraisal`` invocation of the real
typer app; every environment variable is a real setting and the settings load; tokens are required
substitutions that pair up; the URLs, ports, healthchecks and data paths agree with what the
services serve and what ``example-data`` and ``certs`` write; the image runs as an unprivileged
user and installs from the lock.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, get_origin
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from packaging.specifiers import SpecifierSet

from common import cli
from common.cli.serve import SERVICES
from common.errors import ConfigError
from common.ml.examples import write_example_data
from common.web.ports import PortPool
from common.web.schemas import API_PREFIX
from common.web.settings import ServiceSettings
from common.web.tls import check_transport, tls_enabled, write_demo_pki

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

SERVERS = tuple(SERVICES)  # model-owner, data-owner, dealer: compose services of these names
INIT, CLIENT, CERTS = "example-data", "appraise", "certs"
ONE_SHOT = (CERTS, INIT, CLIENT)
CLIENT_ENV = {"DATA_APPRAISAL_TOKEN", "DATA_APPRAISAL_DEBUG"}  # what the one-shots may set
# ${NAME:?message} (required) and ${NAME:-default} (optional); nothing else is used
SUBSTITUTION = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*)(?P<op>:[?-])(?P<arg>[^}]*)\}")
REQUIRED = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*):\?[^}]*\}")


@functools.cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())  # resolves the x-app anchor's merge keys
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"{COMPOSE.name} has no service {name!r} (it has {sorted(services)})"
    return dict(services[name])


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*strings(k), *strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def substitutions() -> dict[str, str]:
    """Every substituted variable and its operator (':?' required, ':-' with a default)."""
    found: dict[str, str] = {}
    for text in strings(compose()):
        assert "$" not in SUBSTITUTION.sub("", text), (
            f"{text!r}: use only ${{NAME:?message}} or ${{NAME:-default}}"
        )
        for m in SUBSTITUTION.finditer(text):
            found[m.group("name")] = m.group("op")
    return found


def fake(name: str) -> str:
    """A distinct stand-in for a variable, as long as a real token must be (MIN_TOKEN_BYTES)."""
    return f"test-{name.lower().replace('_', '-')}".ljust(40, "x")


def substitute(raw: str) -> str:
    """What compose makes of ``raw`` with every required variable set (to a distinct value)."""

    def one(m: re.Match[str]) -> str:
        return fake(m.group("name")) if m.group("op") == ":?" else m.group("arg")

    return SUBSTITUTION.sub(one, raw)


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment") or {}
    assert isinstance(env, dict), f"service {name!r}: write 'environment' as a mapping"
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


# --------------------------------------------------------------------------------------------
# Commands: valid calls of the real CLI
# --------------------------------------------------------------------------------------------


def argv(name: str) -> list[str]:
    """The service's entrypoint (its own, else the image's) and command."""
    svc = service(name)
    entry = svc.get("entrypoint", dockerfile_json("ENTRYPOINT"))
    command = svc.get("command", [])
    assert isinstance(entry, list) and isinstance(command, list), (
        f"service {name!r}: write entrypoint and command as lists (exec form)"
    )
    return [str(w) for w in [*entry, *command]]


def parse_cli(name: str) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The command path and parameters the service's argv resolves to in the real typer app, as a
    run would parse them (unknown options, bad values, missing options fail), without running."""
    words = argv(name)
    assert words[0] in pyproject()["project"]["scripts"], f"service {name!r} runs {words[0]!r}"
    cmd: Any = typer.main.get_command(cli.app)
    path: list[str] = []
    try:
        ctx = cmd.make_context(words[0], words[1:])
        while hasattr(cmd, "resolve_command"):  # a group: its own options, then its command
            rest = [*ctx._protected_args, *ctx.args]
            if not rest and cmd.invoke_without_command:
                break
            sub_name, cmd, rest = cmd.resolve_command(ctx, rest)
            path.append(sub_name)
            ctx = cmd.make_context(sub_name, rest, parent=ctx)
    except Exception as exc:  # click's UsageError and friends
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        raise AssertionError(f"service {name!r}: `{' '.join(words)}`: {message}") from None
    return tuple(path), dict(ctx.params)


def serve_port(name: str) -> int:
    port = parse_cli(name)[1].get("port")
    assert port is not None, f"service {name!r}: pass --port explicitly to `serve`"
    return int(port)


@pytest.mark.parametrize("name", [*SERVERS, *ONE_SHOT])
def test_every_command_is_a_valid_cli_call(name: str) -> None:
    path, params = parse_cli(name)
    expected = {CERTS: ("certs",), INIT: ("example-data",), CLIENT: ("appraise",)}
    assert path == expected.get(name, (name, "serve")), f"service {name!r} runs {path}"
    if name in SERVERS:
        assert params["host"] == "0.0.0.0", f"service {name!r}: --host 0.0.0.0 (the network)"
        assert not params["demo"], f"service {name!r}: --demo accepts placeholder tokens"


def test_the_one_shots_may_run_again() -> None:
    _, certs = parse_cli(CERTS)
    assert not certs["overwrite"] and certs["ca_key"] is None, (
        f"{CERTS!r} must keep an earlier set (no --overwrite) and discard the CA's key"
    )
    assert "--overwrite" not in service(CERTS)["entrypoint"], (
        f"`run --rm {CERTS} --overwrite` appends to its entrypoint"
    )
    _, init = parse_cli(INIT)
    assert init["overwrite"], f"{INIT!r} needs --overwrite: its volume is full the second time"
    assert str(service(CLIENT).get("restart", "no")) == "no", f"{CLIENT!r} runs once"


def test_start_order() -> None:
    def after(name: str) -> dict[str, str]:
        deps = service(name).get("depends_on") or {}
        return {k: (v or {}).get("condition", "service_started") for k, v in dict(deps).items()}

    for name in SERVERS:  # they load their certificates (and the owners the example files)
        assert after(name).get(CERTS) == "service_completed_successfully", name
    for name in ("model-owner", "data-owner"):
        assert after(name).get(INIT) == "service_completed_successfully", name
    for name in SERVERS:
        assert after(CLIENT).get(name) == "service_healthy", f"{CLIENT!r} waits for {name!r}"


# --------------------------------------------------------------------------------------------
# Environment: real settings that load, and tokens that pair up
# --------------------------------------------------------------------------------------------


def settings_class(name: str) -> tuple[type[ServiceSettings], str]:
    settings, _ = SERVICES[name].build({"demo": True})
    return type(settings), SERVICES[name].prefix


def load_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings the service would run with: its environment (substituted), its CLI options."""
    cls, prefix = settings_class(name)
    for var in list(os.environ):  # only the compose file's environment
        if var.upper().startswith(prefix):
            monkeypatch.delenv(var)
    for var, raw in environment(name).items():
        monkeypatch.setenv(var, substitute(raw))
    params = parse_cli(name)[1]
    try:
        return cls(host=params["host"], port=params["port"])
    except ValueError as exc:
        raise AssertionError(f"service {name!r}: its environment does not load: {exc}") from None


@pytest.mark.parametrize("name", [*SERVERS, *ONE_SHOT])
def test_environment_names_are_settings_and_load(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(name)
    if name in ONE_SHOT:
        assert set(env) <= CLIENT_ENV, f"service {name!r} sets {sorted(set(env) - CLIENT_ENV)}"
        return
    cls, prefix = settings_class(name)
    for var in env:
        field = var.removeprefix(prefix).lower()
        assert var.startswith(prefix) and field in cls.model_fields, (
            f"service {name!r}: {var} is not a setting of {cls.__name__}"
        )
    settings = load_settings(name, monkeypatch)
    assert not settings.demo and settings.port == serve_port(name)
    settings.check_secrets()  # every token set, none the placeholder


def secret_values(name: str) -> list[str]:
    """The raw values of the service's secret settings (each value of a JSON map of tokens)."""
    cls, prefix = settings_class(name)
    out = []
    for field in cls.secret_fields:
        raw = environment(name).get(f"{prefix}{field.upper()}")
        assert raw is not None, f"service {name!r} does not set {prefix}{field.upper()}"
        is_map = get_origin(cls.model_fields[field].annotation) is dict
        # a map of peers: each peer's credential object holds its token
        out += [str(v["token"]) for v in json.loads(raw).values()] if is_map else [raw]
    return out


def test_tokens_are_required_substitutions_that_pair_up(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVERS:
        for raw in secret_values(name):
            assert REQUIRED.fullmatch(raw), (
                f"service {name!r}: a token must be '${{NAME:?set it in .env}}', not {raw!r}"
            )
    assert REQUIRED.fullmatch(environment(CLIENT)["DATA_APPRAISAL_TOKEN"])
    mo, do, dealer = (
        load_settings(n, monkeypatch) for n in ("model-owner", "data-owner", "dealer")
    )

    def secret(value: Any) -> str:
        return str(value.get_secret_value())

    (do_name,) = mo.data_owners
    (dealer_name,) = do.dealers
    mo_at_do = secret(mo.data_owners[do_name].token)
    do_at_dealer = secret(do.dealers[dealer_name].token)
    assert secret(do.model_owners[mo.name].token) == mo_at_do
    assert secret(dealer.model_owners[mo.name].token) == secret(mo.dealer_token)
    assert secret(dealer.data_owners[do_name].token) == do_at_dealer
    assert substitute(environment(CLIENT)["DATA_APPRAISAL_TOKEN"]) == secret(mo.api_token)
    operators = [secret(s.api_token) for s in (mo, do, dealer)]
    peers = [mo_at_do, secret(mo.dealer_token), do_at_dealer]
    assert len(set(operators + peers)) == 6, "two tokens come from the same variable"


def test_env_example_lists_the_variables_without_values() -> None:
    """Required variables as empty `NAME=` lines; optional ones commented with their default."""
    found = substitutions()
    lines = [line.strip() for line in ENV_EXAMPLE.read_text().splitlines() if line.strip()]
    entries = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    assert set(entries) == {n for n, op in found.items() if op == ":?"}, entries
    assert not any(entries.values()), f"{ENV_EXAMPLE.name} must not hold values (secrets)"
    commented = "\n".join(line for line in lines if line.startswith("#"))
    for name in (n for n, op in found.items() if op == ":-"):
        assert f"# {name}=" in commented, f"{ENV_EXAMPLE.name} does not mention {name}"


# --------------------------------------------------------------------------------------------
# The network: URLs, ports, healthchecks, the rendezvous
# --------------------------------------------------------------------------------------------


def assert_points_at(url: str, target: str, what: str) -> None:
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port) == ("https", target, serve_port(target)), (
        f"{what} = {url!r}: expected https://{target}:{serve_port(target)} (its name on the "
        "network, which its certificate carries)"
    )


def test_urls_and_the_rendezvous_reach_the_services(monkeypatch: pytest.MonkeyPatch) -> None:
    mo = load_settings("model-owner", monkeypatch)
    do = load_settings("data-owner", monkeypatch)
    assert_points_at(mo.dealer_url, "dealer", "MODEL_OWNER_DEALER_URL")
    (at_do,) = mo.data_owners.values()
    assert_points_at(at_do.url, "data-owner", "MODEL_OWNER_DATA_OWNERS's url")
    _, client = parse_cli(CLIENT)
    assert_points_at(client["model_owner"], "model-owner", f"{CLIENT} --model-owner")
    assert_points_at(client["data_owner"], "data-owner", f"{CLIENT} --data-owner")
    assert client["data_owner"].rstrip("/") == at_do.url.rstrip("/"), "a session names it by URL"
    assert do.dealer(mo.dealer_url) is not None, "the data owner trusts the model owner's dealer"
    assert list(do.model_owners) == [mo.name], "the data owner knows the model owner by its name"
    (peer,) = do.model_owners.values()
    assert peer.callback_url is not None
    assert_points_at(peer.callback_url, "model-owner", "DATA_OWNER_MODEL_OWNERS's callback_url")
    assert peer.rendezvous_hosts == [mo.advertise_host], "its workers may reach the rendezvous"
    assert mo.advertise_host == "model-owner", "the other workers reach the rendezvous by name"
    try:
        pool = PortPool(mo.rendezvous_ports)  # parses the range only, binds nothing
    except ConfigError as exc:
        raise AssertionError(f"MODEL_OWNER_RENDEZVOUS_PORTS: {exc}") from None
    exposed = [str(e) for e in service("model-owner").get("expose") or []]
    assert exposed == [f"{pool.ports[0]}-{pool.ports[-1]}"], (
        f"model-owner exposes {exposed}, MODEL_OWNER_RENDEZVOUS_PORTS is {mo.rendezvous_ports}"
    )
    assert serve_port("model-owner") not in pool.ports


@pytest.mark.parametrize("name", SERVERS)
def test_ports_and_healthcheck_match_the_served_port_and_tls(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for published in service(name).get("ports") or []:
        host, _, container = substitute(str(published)).rpartition(":")
        assert host.startswith("127.0.0.1:"), f"service {name!r} publishes {published} off loopback"
        assert int(container) == serve_port(name), f"service {name!r} publishes {published}"
    test = service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], (
        f"service {name!r}: python -c (the image has no curl)"
    )
    code = test[3]
    compile(code, f"<healthcheck of {name}>", "exec")
    (url,) = re.findall(r"https?://[^\s'\"]+", code)
    assert url == f"https://127.0.0.1:{serve_port(name)}{API_PREFIX}/health", url
    settings = load_settings(name, monkeypatch)
    for path in (settings.tls_ca, settings.tls_cert, settings.tls_key):  # mutual TLS
        assert f"'{path}'" in code, f"service {name!r}: its healthcheck should use {path}"


# --------------------------------------------------------------------------------------------
# Volumes: TLS files, data and state where the one-shots write them
# --------------------------------------------------------------------------------------------


def in_volume(name: str, path: str | Path) -> tuple[str, PurePosixPath, bool]:
    """(named volume, path inside it, read-only) where the service sees ``path``."""
    target = PurePosixPath(str(path))
    best: tuple[str, PurePosixPath, bool] | None = None
    for volume in service(name).get("volumes") or []:
        source, mount, *mode = str(volume).split(":")
        inside = PurePosixPath(mount)
        if (target == inside or inside in target.parents) and (
            best is None or len(inside.parts) > len(PurePosixPath(best[1]).parts)
        ):
            best = (source, PurePosixPath(mount), "ro" in mode)
    assert best is not None, f"service {name!r}: {path} is in no volume it mounts"
    assert best[0] in compose()["volumes"], f"service {name!r}: {best[0]!r} is not a named volume"
    return best[0], target.relative_to(best[1]), best[2]


@pytest.mark.parametrize("name", SERVERS)
def test_servers_use_the_certificates_certs_writes_read_only(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cryptography import x509

    _, params = parse_cli(CERTS)
    pki = write_demo_pki(tmp_path, params["name"] or ("model-owner",), days=params["days"])
    volume, base, read_only = in_volume(CERTS, params["out"])
    assert not read_only
    settings = load_settings(name, monkeypatch)
    check_transport(settings)
    assert tls_enabled(settings) and settings.tls_client_auth == "required", name
    for path, expected in (
        (settings.tls_cert, pki.cert(name)),
        (settings.tls_key, pki.key(name)),
        (settings.tls_ca, pki.ca),
    ):
        assert in_volume(name, path) == (volume, base / expected.name, True), (
            f"service {name!r}: {path} should be {CERTS!r}'s {expected.name}, mounted read-only"
        )
    cert = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert name in sans.get_values_for_type(x509.DNSName), f"{name}'s certificate must name it"
    _, client = parse_cli(CLIENT)
    for option, file in (("tls_ca", pki.ca), ("tls_cert", pki.cert("operator"))):
        assert in_volume(CLIENT, client[option])[:2] == (volume, base / file.name), option


def test_data_and_state_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, init = parse_cli(INIT)
    split = write_example_data(tmp_path, seed=init["seed"], overwrite=True)
    volume, base, read_only = in_volume(INIT, init["directory"])
    assert not read_only

    def written(path: Path) -> tuple[str, PurePosixPath]:
        return volume, base / path.relative_to(tmp_path).as_posix()

    mo = load_settings("model-owner", monkeypatch)
    do = load_settings("data-owner", monkeypatch)
    assert in_volume("model-owner", mo.train)[:2] == written(split.train)
    assert in_volume("model-owner", mo.test)[:2] == written(split.test)
    assert in_volume("data-owner", do.data_dir)[:2] == written(split.candidates[0].parent)
    assert sorted(parse_cli(CLIENT)[1]["dataset"]) == [c.stem for c in split.candidates]
    state_volumes = set()
    for name in SERVERS:
        settings = load_settings(name, monkeypatch)
        state, _, read_only = in_volume(name, settings.database_path)
        assert not read_only and in_volume(name, settings.state_dir)[0] == state, name
        state_volumes.add(state)
    assert len(state_volumes) == len(SERVERS), "each service needs a state volume of its own"


# --------------------------------------------------------------------------------------------
# The Dockerfile
# --------------------------------------------------------------------------------------------


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@functools.cache
def dockerfile() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continued lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (keyword.upper(), args.strip())
        for keyword, _, args in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def dockerfile_json(keyword: str) -> list[str]:
    (value,) = [json.loads(args) for kw, args in dockerfile() if kw == keyword][-1:]
    return list(value)


def test_image_base_user_and_entrypoint() -> None:
    args = dict(a.split("=", 1) for kw, a in dockerfile() if kw == "ARG" and "=" in a)
    bases = [
        args.get(a.split()[0].strip("${}"), a.split()[0]) for kw, a in dockerfile() if kw == "FROM"
    ]
    m = re.fullmatch(r"python:(\d+\.\d+)-slim", bases[-1])
    assert m, f"the image's base is {bases[-1]!r}, expected python:3.X-slim"
    assert f"{m.group(1)}.0" in SpecifierSet(pyproject()["project"]["requires-python"])
    final = dockerfile()[max(i for i, (kw, _) in enumerate(dockerfile()) if kw == "FROM") :]
    users = [a for kw, a in final if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as an unprivileged user"
    assert dockerfile_json("ENTRYPOINT") == list(pyproject()["project"]["scripts"])
    # the volumes' mount points exist and belong to that user (a fresh volume copies its owner)
    run = " ".join(a for kw, a in final if kw == "RUN")
    mounted = {
        str(v).split(":")[1] for n in [*SERVERS, *ONE_SHOT] for v in service(n).get("volumes") or []
    }
    for path in mounted:
        assert path in run.split("mkdir -p", 1)[-1], f"{DOCKERFILE.name} does not create {path}"
    assert f"chown -R {users[-1]}:{users[-1]}" in run


def test_image_installs_from_the_lock_and_copies_every_package() -> None:
    runs = " ".join(a for kw, a in dockerfile() if kw == "RUN")
    for call in re.findall(r"pip install ([^&;]+)", runs):
        assert "-c requirements/lock.txt" in call or (
            "--no-deps --require-hashes -r requirements/crypten.txt" in call
        ), f"{DOCKERFILE.name}: `pip install {call.strip()}` ignores the lock"
    assert "TORCH_WHEEL_DIR" in runs or any(
        "TORCH_WHEEL_DIR" in a for kw, a in dockerfile() if kw == "COPY"
    )
    copied = {w.rstrip("/") for kw, a in dockerfile() if kw == "COPY" for w in a.split()[:-1]}
    packages = {p.split(".")[0] for p in pyproject()["tool"]["setuptools"]["packages"]}
    missing = {"pyproject.toml", pyproject()["project"]["readme"], *packages} - copied
    assert not missing, f"{DOCKERFILE.name} does not COPY {sorted(missing)}"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git"} <= ignored, "secrets and the venv stay out of the context"
    assert "wheels" not in ignored, "the build reads a local torch wheel from wheels/"


# --------------------------------------------------------------------------------------------
# Compose itself, where it is installed
# --------------------------------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    if shutil.which("docker") and (
        subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_config_accepts_the_file_and_requires_every_token() -> None:
    command = compose_cli()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (as in CI)")
    required = [n for n, op in substitutions().items() if op == ":?"]
    base = {k: v for k, v in os.environ.items() if k not in substitutions()}

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "-f", str(COMPOSE), "config"],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )

    full = config({n: fake(n) for n in required})
    assert full.returncode == 0, full.stderr
    resolved = yaml.safe_load(full.stdout)
    assert set(resolved["services"]) == {*SERVERS, *ONE_SHOT}
    mo_env = resolved["services"]["model-owner"]["environment"]
    assert mo_env["MODEL_OWNER_API_TOKEN"] == fake("MODEL_OWNER_API_TOKEN")
    for name in required:
        missing = config({n: fake(n) for n in required if n != name})
        assert missing.returncode != 0 and name in missing.stderr, (name, missing.stderr)


def test_the_image_healthcheck_finds_the_service_pid_1_serves() -> None:
    """The Dockerfile's HEALTHCHECK runs `data-appraisal health`, which reads PID 1's command line."""
    from common.cli.health import served_by

    assert re.search(
        r'HEALTHCHECK .*\n\s+CMD \["data-appraisal", "health"\]', DOCKERFILE.read_text()
    ), "the image's HEALTHCHECK"
    argv = ["/opt/venv/bin/python", "/opt/venv/bin/data-appraisal", "data-owner", "serve"]
    assert served_by([*argv, "--host", "0.0.0.0", "--port", "9001"]) == ("data-owner", 9001)
    assert served_by([*argv, "--port=9002"]) == ("data-owner", 9002)
    assert served_by(argv) == ("data-owner", None)
    assert served_by(["data-appraisal", "appraise", "--dataset", "serve"]) is None
    assert served_by(["data-appraisal", "certs", "--out", "/tls"]) is None
