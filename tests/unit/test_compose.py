"""docker-compose.yml and the Dockerfile, checked against the CLI and the settings (no Docker).

No Docker engine runs where the tests do, so these tests parse both files and check what a
``docker compose up`` would depend on: every command is a valid ``data-appraisal`` invocation of the
real typer app, every environment variable names a real setting and loads into the settings class,
the ports, URLs and healthchecks agree, the data paths match what ``example-data`` writes, every
service serves mutual TLS with the certificates ``certs`` writes, tokens come from the environment
or ``.env`` (never literals), and the image installs what the Makefile installs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
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
DOCKERIGNORE = ROOT / ".dockerignore"

SERVERS = tuple(SERVICES)  # model-owner, data-owner, dealer: compose services of these names
INIT, CLIENT, CERTS = "example-data", "appraise", "certs"
ONE_SHOT = (CERTS, INIT, CLIENT)
# environment variables the one-shot services may set (they have no settings class)
CLIENT_ENV = {
    CERTS: {"DATA_APPRAISAL_DEBUG"},
    INIT: {"DATA_APPRAISAL_DEBUG"},
    CLIENT: {"DATA_APPRAISAL_TOKEN", "DATA_APPRAISAL_DEBUG"},
}
# ${NAME}, ${NAME:?message}, ${NAME:-default}, ... and $NAME; $$ is a literal $
SUBSTITUTION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)
REQUIRED = re.compile(r"\$\{(?P<name>[A-Za-z_]\w*):\?[^}]*\}")


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    assert COMPOSE.exists(), f"{COMPOSE.name} is missing"
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        f"{COMPOSE.name} has no 'services' mapping"
    )
    return data


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"{COMPOSE.name} has no service {name!r} (it has {sorted(services)})"
    return dict(services[name])


def environment(name: str) -> dict[str, str]:
    """The service's environment as written (before substitution), list or mapping syntax."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        env = dict(pairs)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def strings(node: Any = None) -> Iterator[str]:
    """Every string in the compose file (compose substitutes in these, not in comments)."""
    node = compose() if node is None else node
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def variables() -> set[str]:
    """Every variable the compose file substitutes."""
    names = set()
    for text in strings():
        for m in SUBSTITUTION.finditer(text):
            if m.group(0) != "$$":
                names.add(m.group("braced") or m.group("bare"))
    return names


def fake_values() -> dict[str, str]:
    """A distinct stand-in for every variable, as `.env` would provide."""
    # as long as a real token must be (common.web.settings.MIN_TOKEN_BYTES)
    return {
        name: f"test-{name.lower().replace('_', '-')}".ljust(40, "x")
        for name in sorted(variables())
    }


def interpolate(value: str, values: dict[str, str]) -> str:
    """Compose's variable substitution (the subset of its syntax that matters here)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op") or "", m.group("arg") or ""
        present = name in values and (values[name] != "" or not op.startswith(":"))
        if op.endswith("?") and not present:
            raise AssertionError(f"compose would refuse to start: {name} unset ({arg})")
        if op.endswith("-") and not present:
            return arg
        if op.endswith("+"):
            return arg if present else ""
        return values.get(name, "")

    return SUBSTITUTION.sub(one, value)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


@functools.cache
def dockerfile() -> tuple[Instruction, ...]:
    assert DOCKERFILE.exists(), f"{DOCKERFILE.name} is missing"
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, f"{DOCKERFILE.name} ends inside a continued line"
    out = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    return tuple(out)


def instructions(keyword: str) -> list[tuple[int, Instruction]]:
    return [(i, ins) for i, ins in enumerate(dockerfile()) if ins.keyword == keyword]


def exec_form(ins: Instruction) -> list[str]:
    try:
        value = json.loads(ins.args)
    except json.JSONDecodeError:
        raise AssertionError(f"{ins.keyword} {ins.args} is not in exec (JSON) form") from None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def shell_commands(ins: Instruction) -> Iterator[list[str]]:
    """Each simple command of a RUN, split into words."""
    for part in re.split(r"&&|;|\|\|", ins.args):
        words = shlex.split(part)
        if words:
            yield words


def pip_installs(ins: Instruction) -> Iterator[list[str]]:
    """The arguments after `pip install` (or `python -m pip install`) in a RUN."""
    for words in shell_commands(ins):
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                yield words[i + 2 :]
                break


def entrypoint() -> list[str]:
    found = instructions("ENTRYPOINT")
    assert found, f"{DOCKERFILE.name} has no ENTRYPOINT"
    return exec_form(found[-1][1])


@functools.cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def argv(name: str) -> list[str]:
    """The service's full argv: its entrypoint (the image's unless overridden) and its command."""
    svc = service(name)
    entry = svc.get("entrypoint", entrypoint())
    command = svc.get("command")
    assert isinstance(command, list), (
        f"service {name!r}: write 'command' as a list (exec form), got {command!r}"
    )
    entry = shlex.split(entry) if isinstance(entry, str) else list(entry)
    return [str(w) for w in [*entry, *command]]


@dataclass(frozen=True)
class Invocation:
    path: tuple[str, ...]  # e.g. ("model-owner", "serve")
    params: dict[str, Any]


def parse_cli(name: str) -> Invocation:
    """Resolve the service's argv against the real typer app, without running anything.

    Groups resolve their sub-command by name (an unknown one fails); the final command parses its
    options and arguments exactly as a run would (unknown options, bad values and missing required
    options fail) but its callback is not called.
    """
    words = argv(name)
    script = pyproject()["project"]["scripts"]
    assert words and words[0] in script, (
        f"service {name!r} runs {words[:1]}, not the console script {sorted(script)}"
    )
    cmd: Any = typer.main.get_command(cli.app)
    ctx: Any = None
    info_name, rest, path = words[0], words[1:], []
    try:
        while hasattr(cmd, "resolve_command"):  # a group
            ctx = cmd.context_class(cmd, info_name=info_name, parent=ctx)
            assert rest, f"service {name!r}: {' '.join(words)} stops at a group, not a command"
            sub_name, sub, rest = cmd.resolve_command(ctx, rest)
            path.append(sub_name)
            cmd, info_name = sub, sub_name
        leaf = cmd.make_context(info_name, list(rest), parent=ctx)
    except AssertionError:
        raise
    except Exception as exc:  # click's UsageError and friends, typer.Exit for --help
        message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
        raise AssertionError(
            f"service {name!r}: `{shlex.join(words)}` is not a valid CLI call: {message}"
        ) from None
    return Invocation(tuple(path), dict(leaf.params))


def settings_class(name: str) -> tuple[type[ServiceSettings], str]:
    settings, _ = SERVICES[name].build({"demo": True})
    return type(settings), SERVICES[name].prefix


def load_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    """The settings the service would run with: its environment (substituted) plus CLI overrides."""
    cls, prefix = settings_class(name)
    for var in list(os.environ):  # the settings must come from the compose file alone
        if var.upper().startswith(prefix):
            monkeypatch.delenv(var)
    values = fake_values()
    for var, raw in environment(name).items():
        monkeypatch.setenv(var, interpolate(raw, values))
    params = parse_cli(name).params
    overrides = {k: params[k] for k in ("host", "port") if params.get(k) is not None}
    if params.get("demo"):
        overrides["demo"] = True
    try:
        return cls(**overrides)
    except ValueError as exc:
        raise AssertionError(f"service {name!r}: its environment does not load: {exc}") from None


def mounts(name: str) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each of the service's volumes."""
    out = []
    for v in service(name).get("volumes") or []:
        if isinstance(v, dict):
            out.append((str(v.get("source", "")), str(v["target"]), bool(v.get("read_only"))))
            continue
        parts = str(v).split(":")
        if len(parts) == 1:
            out.append(("", parts[0], False))
        else:
            mode = parts[2] if len(parts) > 2 else ""
            out.append((parts[0], parts[1], "ro" in mode.split(",")))
    return out


def in_volume(name: str, path: str | Path) -> tuple[str, PurePosixPath, bool]:
    """(named volume, path inside it, read_only) where the service sees ``path``."""
    target_path = PurePosixPath(str(path))
    assert target_path.is_absolute(), f"service {name!r}: {path} is not an absolute path"
    named = compose().get("volumes") or {}
    best: tuple[str, PurePosixPath, bool] | None = None
    best_len = -1
    for source, target, ro in mounts(name):
        mount = PurePosixPath(target)
        inside = target_path == mount or mount in target_path.parents
        if inside and len(mount.parts) > best_len:  # the innermost mount wins
            best, best_len = (source, target_path.relative_to(mount), ro), len(mount.parts)
    assert best is not None, f"service {name!r}: {path} is in no volume it mounts"
    assert best[0] in named, (
        f"service {name!r}: {path} is in {best[0]!r}, not a named volume of {COMPOSE.name}"
    )
    return best


def published_ports(name: str) -> list[int]:
    out = []
    for p in service(name).get("ports") or []:
        if isinstance(p, dict):
            out.append(int(p["target"]))
        else:
            out.append(int(str(p).split("/")[0].rsplit(":", 1)[-1]))
    return out


def serve_port(name: str) -> int:
    port = parse_cli(name).params.get("port")
    assert port is not None, f"service {name!r}: pass --port explicitly to `serve`"
    return int(port)


def assert_points_at(url: str, target: str, what: str) -> None:
    """``url`` reaches the compose service ``target`` over TLS on the port that service serves."""
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.hostname == target, (
        f"{what} = {url!r} should be https://{target}:<port> (TLS, to the service's name on the "
        "network, which its certificate names)"
    )
    assert parts.port == serve_port(target), (
        f"{what} = {url!r}: service {target!r} serves port {serve_port(target)}"
    )


# --------------------------------------------------------------------------------------------
# Services, network, image
# --------------------------------------------------------------------------------------------


def test_services_exist_and_share_a_network() -> None:
    names = [*SERVERS, *ONE_SHOT]
    networks = {}
    for name in names:
        nets = service(name).get("networks") or ["default"]
        networks[name] = set(nets if isinstance(nets, list) else nets.keys())
    shared = set.intersection(*networks.values())
    assert shared, f"the services share no network: {networks}"
    for net in shared - {"default"}:
        assert net in (compose().get("networks") or {}), f"network {net!r} is not declared"


def test_every_service_runs_the_image_built_from_the_dockerfile() -> None:
    for name in [*SERVERS, *ONE_SHOT]:
        svc = service(name)
        build = svc.get("build")
        assert build is not None, f"service {name!r} has no 'build' (the Dockerfile's image)"
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile_name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
        assert (ROOT / context).resolve() == ROOT, f"service {name!r}: build context {context!r}"
        assert (dockerfile_name or "Dockerfile") == DOCKERFILE.name, (
            f"service {name!r} builds {dockerfile_name!r}"
        )
    images = {service(name).get("image") for name in [*SERVERS, *ONE_SHOT]}
    assert len(images) == 1 and None not in images, (
        f"every service should name the one image it builds ('image:'), got {images}"
    )


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVERS)
def test_server_command_serves_that_service_on_all_interfaces(name: str) -> None:
    call = parse_cli(name)
    assert call.path == (name, "serve"), (
        f"compose service {name!r} runs `{' '.join(call.path)}`, not `{name} serve`"
    )
    assert call.params["host"] == "0.0.0.0", (
        f"service {name!r} must bind --host 0.0.0.0 to be reachable on the network "
        f"(got {call.params['host']!r})"
    )
    assert not call.params["demo"], f"service {name!r}: --demo accepts placeholder tokens"


@pytest.mark.parametrize("name", SERVERS)
def test_healthcheck_gets_health_on_the_served_port(name: str) -> None:
    check = service(name).get("healthcheck")
    assert check and check.get("test"), f"service {name!r} has no healthcheck"
    test = check["test"]
    assert isinstance(test, list) and test[0] == "CMD", (
        f"service {name!r}: the healthcheck is ['CMD', ...] (the slim image has no curl), got {test}"
    )
    assert test[1] in ("python", "python3") and test[2] == "-c", (
        f"service {name!r}: the healthcheck should run `python -c ...`, got {test[:3]}"
    )
    code = test[3]
    compile(code, f"<healthcheck of {name}>", "exec")  # a SyntaxError fails here, not in Docker
    urls = re.findall(r"https?://[^\s'\"]+", code)
    assert len(urls) == 1, f"service {name!r}: expected one URL in the healthcheck, got {urls}"
    parts = urlsplit(urls[0])
    assert parts.hostname in ("127.0.0.1", "localhost"), urls[0]
    assert parts.port == serve_port(name), (
        f"service {name!r}: the healthcheck asks port {parts.port}, `serve` uses {serve_port(name)}"
    )
    assert parts.path == f"{API_PREFIX}/health", (
        f"service {name!r}: the healthcheck asks {parts.path}, the route is {API_PREFIX}/health"
    )


@pytest.mark.parametrize("name", SERVERS)
def test_healthcheck_speaks_the_services_tls(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS service answers no plain-HTTP healthcheck; a mutual-TLS one none without a cert."""
    settings = load_settings(name, monkeypatch)
    code = service(name)["healthcheck"]["test"][3]
    (url,) = re.findall(r"https?://[^\s'\"]+", code)
    if not tls_enabled(settings):
        return
    assert url.startswith("https://"), f"service {name!r} serves TLS; its healthcheck asks {url}"
    assert f"'{settings.tls_ca}'" in code, (
        f"service {name!r}: the healthcheck should verify against {settings.tls_ca} (its TLS_CA)"
    )
    if settings.tls_client_auth == "required":
        for path in (settings.tls_cert, settings.tls_key):
            assert f"'{path}'" in code, (
                f"service {name!r} requires client certificates: its healthcheck should present "
                f"one ({path})"
            )


@pytest.mark.parametrize("name", SERVERS)
def test_published_ports_are_the_served_port(name: str) -> None:
    for port in published_ports(name):
        assert port == serve_port(name), (
            f"service {name!r} publishes container port {port}, but serves {serve_port(name)}"
        )


def test_init_writes_the_example_split_and_may_run_again() -> None:
    call = parse_cli(INIT)
    assert call.path == ("example-data",), f"{INIT!r} runs {call.path}"
    assert call.params["overwrite"], (
        f"{INIT!r} needs --overwrite: on the second `docker compose up` its volume is not empty"
    )
    _, _, read_only = in_volume(INIT, call.params["directory"])
    assert not read_only, f"{INIT!r} writes into a read-only volume"


def test_client_appraises_the_example_candidates_on_the_services() -> None:
    call = parse_cli(CLIENT)
    assert call.path == ("appraise",), f"{CLIENT!r} runs {call.path}"
    assert_points_at(call.params["model_owner"], "model-owner", f"{CLIENT} --model-owner")
    assert_points_at(call.params["data_owner"], "data-owner", f"{CLIENT} --data-owner")
    assert call.params["dataset"], f"{CLIENT!r} names no --dataset"


def test_start_order() -> None:
    def conditions(name: str) -> dict[str, str]:
        deps = service(name).get("depends_on") or {}
        if isinstance(deps, list):
            return dict.fromkeys(deps, "service_started")
        return {k: (v or {}).get("condition", "service_started") for k, v in deps.items()}

    client = conditions(CLIENT)
    for name in SERVERS:
        assert client.get(name) == "service_healthy", (
            f"{CLIENT!r} must wait until {name!r} is healthy (depends_on condition "
            f"service_healthy), got {client.get(name)}"
        )
    for name in ("model-owner", "data-owner"):  # they read the example files at startup
        assert conditions(name).get(INIT) == "service_completed_successfully", (
            f"{name!r} must wait for {INIT!r} (condition service_completed_successfully)"
        )
    for name in SERVERS:  # they load their certificates at startup
        assert conditions(name).get(CERTS) == "service_completed_successfully", (
            f"{name!r} must wait for {CERTS!r} (condition service_completed_successfully)"
        )
    assert str(service(CLIENT).get("restart", "no")) == "no", f"{CLIENT!r} runs once"


# --------------------------------------------------------------------------------------------
# Environment and settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*SERVERS, *ONE_SHOT])
def test_environment_names_are_settings(name: str) -> None:
    env = environment(name)
    if name in CLIENT_ENV:
        unknown = set(env) - CLIENT_ENV[name]
        assert not unknown, f"service {name!r} sets {sorted(unknown)}, which nothing reads"
        return
    cls, prefix = settings_class(name)
    for var in env:
        assert var.startswith(prefix), f"service {name!r}: {var} lacks the prefix {prefix}"
        field = var[len(prefix) :].lower()
        assert field in cls.model_fields, (
            f"service {name!r}: {var} is not a setting of {cls.__name__} "
            f"(fields: {', '.join(sorted(cls.model_fields))})"
        )


@pytest.mark.parametrize("name", SERVERS)
def test_settings_load_with_every_secret_set(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(name, monkeypatch)
    assert not settings.demo, f"service {name!r} runs in demo mode"
    assert settings.port == serve_port(name)
    # refuses a secret that is unset (left at the placeholder) like the service does at startup
    try:
        settings.check_secrets()
    except Exception as exc:
        raise AssertionError(f"service {name!r}: {exc}") from None


def secret_references(name: str) -> dict[str, list[str]]:
    """For each secret setting of the service, the raw values it is built from."""
    cls, prefix = settings_class(name)
    env = environment(name)
    out: dict[str, list[str]] = {}
    for field in cls.secret_fields:
        var = f"{prefix}{field.upper()}"
        if var not in env:
            continue
        raw = env[var]
        if get_origin(cls.model_fields[field].annotation) is dict:
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError:
                raise AssertionError(f"service {name!r}: {var} is not a JSON object") from None
            assert isinstance(parsed, dict), f"service {name!r}: {var} is not a JSON object"
            out[var] = [str(v["token"] if isinstance(v, dict) else v) for v in parsed.values()]
        else:
            out[var] = [raw]
    return out


@pytest.mark.parametrize("name", SERVERS)
def test_tokens_are_required_substitutions_not_literals(name: str) -> None:
    refs = secret_references(name)
    assert refs, f"service {name!r} sets no token"
    for var, raws in refs.items():
        for raw in raws:
            assert REQUIRED.fullmatch(raw), (
                f"service {name!r}: {var} must be a required substitution like "
                f"'${{NAME:?set it in .env}}', never a literal; got {raw!r}"
            )
    token = environment(CLIENT).get("DATA_APPRAISAL_TOKEN", "")
    assert REQUIRED.fullmatch(token), f"{CLIENT}: DATA_APPRAISAL_TOKEN = {token!r}"


def test_tokens_pair_up_and_are_distinct(monkeypatch: pytest.MonkeyPatch) -> None:
    mo: Any = load_settings("model-owner", monkeypatch)
    do: Any = load_settings("data-owner", monkeypatch)
    dealer: Any = load_settings("dealer", monkeypatch)

    def secret(value: Any) -> str:
        return str(value.get_secret_value())

    assert mo.name in do.model_owners, (
        f"DATA_OWNER_MODEL_OWNERS has no entry for MODEL_OWNER_NAME={mo.name!r}"
    )
    ((_, at_do),) = mo.data_owners.items()
    assert secret(do.model_owners[mo.name].token) == secret(at_do.token), (
        "MODEL_OWNER_DATA_OWNERS[...].token and DATA_OWNER_MODEL_OWNERS[name].token differ"
    )
    assert mo.name in dealer.model_owners, (
        f"DEALER_MODEL_OWNERS has no entry for MODEL_OWNER_NAME={mo.name!r}"
    )
    assert secret(dealer.model_owners[mo.name].token) == secret(mo.dealer_token), (
        "MODEL_OWNER_DEALER_TOKEN and DEALER_MODEL_OWNERS[name].token differ"
    )
    ((_, do_at_dealer),) = do.dealers.items()
    assert any(
        secret(c.token) == secret(do_at_dealer.token) for c in dealer.data_owners.values()
    ), "DATA_OWNER_DEALERS[...].token is not in DEALER_DATA_OWNERS"
    client = interpolate(environment(CLIENT)["DATA_APPRAISAL_TOKEN"], fake_values())
    assert client == secret(mo.api_token), (
        f"{CLIENT}: DATA_APPRAISAL_TOKEN must be the model owner's MODEL_OWNER_API_TOKEN"
    )
    # an operator token must not double as a peer's token (a peer would become the operator)
    tokens = [
        secret(mo.api_token),
        secret(do.api_token),
        secret(dealer.api_token),
        secret(at_do.token),
        secret(mo.dealer_token),
        secret(do_at_dealer.token),
    ]
    assert len(set(tokens)) == len(tokens), "two tokens come from the same variable"


def test_model_owner_reaches_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    mo: Any = load_settings("model-owner", monkeypatch)
    do: Any = load_settings("data-owner", monkeypatch)
    assert_points_at(mo.dealer_url, "dealer", "MODEL_OWNER_DEALER_URL")
    for name, peer in mo.data_owners.items():
        assert_points_at(peer.url, "data-owner", f"MODEL_OWNER_DATA_OWNERS[{name!r}].url")
    for name, peer in do.model_owners.items():
        assert peer.callback_url is not None
        assert_points_at(peer.callback_url, "model-owner", f"DATA_OWNER_MODEL_OWNERS[{name!r}]")
        assert mo.advertise_host in peer.rendezvous_hosts, "the data owner refuses the rendezvous"
    assert mo.advertise_host == "model-owner", (
        f"MODEL_OWNER_ADVERTISE_HOST = {mo.advertise_host!r}: the other containers' workers reach "
        "the rendezvous at the model owner's service name"
    )
    try:
        pool = PortPool(mo.rendezvous_ports)  # parses the range only, binds nothing
    except ConfigError as exc:
        raise AssertionError(f"MODEL_OWNER_RENDEZVOUS_PORTS: {exc}") from None
    assert serve_port("model-owner") not in pool.ports, "the API port is in the rendezvous range"
    assert do.dealer(mo.dealer_url) is not None, (
        f"the data owner refuses the dealer {mo.dealer_url}: it is not in DATA_OWNER_DEALERS"
    )
    for exposed in service("model-owner").get("expose") or []:  # documentation: must be true
        low, _, high = str(exposed).partition("-")
        documented = range(int(low), int(high or low) + 1)
        assert documented in (
            pool.ports,
            range(serve_port("model-owner"), serve_port("model-owner") + 1),
        ), (
            f"model-owner exposes {exposed}: neither its API port nor MODEL_OWNER_RENDEZVOUS_PORTS "
            f"{mo.rendezvous_ports}"
        )


# --------------------------------------------------------------------------------------------
# Volumes and paths
# --------------------------------------------------------------------------------------------


def test_data_paths_match_the_example_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init = parse_cli(INIT)
    split = write_example_data(tmp_path, seed=init.params["seed"], overwrite=True)
    volume, base, _ = in_volume(INIT, init.params["directory"])

    def written(path: Path) -> tuple[str, PurePosixPath]:
        return volume, base / PurePosixPath(path.relative_to(tmp_path).as_posix())

    mo: Any = load_settings("model-owner", monkeypatch)
    for setting, expected in (("TRAIN", split.train), ("TEST", split.test)):
        where = in_volume("model-owner", getattr(mo, setting.lower()))[:2]
        assert where == written(expected), (
            f"MODEL_OWNER_{setting} is {where} (volume, path), {INIT!r} writes {written(expected)}"
        )
    do: Any = load_settings("data-owner", monkeypatch)
    where = in_volume("data-owner", do.data_dir)[:2]
    assert where == written(split.candidates[0].parent), (
        f"DATA_OWNER_DATA_DIR is {where} (volume, path); {INIT!r} writes the candidates in "
        f"{written(split.candidates[0].parent)}"
    )
    ids = [c.stem for c in split.candidates]
    datasets = parse_cli(CLIENT).params["dataset"]
    assert sorted(datasets) == ids, f"{CLIENT!r} appraises {datasets}, {INIT!r} writes {ids}"


@pytest.mark.parametrize("name", SERVERS)
def test_server_serves_mutual_tls_never_plain_http(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(name, monkeypatch)
    prefix = settings_class(name)[1]
    assert not settings.insecure_http, f"service {name!r} sets {prefix}INSECURE_HTTP"
    try:
        check_transport(settings)  # what `serve` checks before it reads the files
    except ConfigError as exc:
        raise AssertionError(f"service {name!r}: {exc}") from None
    assert tls_enabled(settings), f"service {name!r}: set {prefix}TLS_CERT and {prefix}TLS_KEY"
    assert settings.tls_client_auth == "required", f"service {name!r}: no mutual TLS"


def test_certs_writes_every_certificate_the_services_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each service's TLS files are the ones `certs` writes, read-only, for its network name."""
    from cryptography import x509

    call = parse_cli(CERTS)
    assert call.path == ("certs",), f"{CERTS!r} runs {call.path}"
    assert not call.params["overwrite"], (
        f"{CERTS!r} must keep the set of an earlier `docker compose up` (no --overwrite): the "
        "running services hold the old one"
    )
    assert call.params["ca_key"] is None, f"{CERTS!r}: the CA's key would land in a volume"
    volume, base, read_only = in_volume(CERTS, call.params["out"])
    assert not read_only, f"{CERTS!r} writes into a read-only volume"
    names = call.params["name"]
    pki = write_demo_pki(tmp_path, names, days=call.params["days"])

    def written(path: Path) -> tuple[str, PurePosixPath]:
        return volume, base / path.name

    def seen_by(name: str, path: Path | str | None, what: str) -> None:
        assert path is not None, f"service {name!r}: {what} is unset"
        where, inside, ro = in_volume(name, path)
        assert (where, inside) in {written(p) for p in tmp_path.iterdir()}, (
            f"service {name!r}: {what} = {path} is not a file {CERTS!r} writes "
            f"(into {volume!r}: {sorted(p.name for p in tmp_path.iterdir())})"
        )
        assert ro, f"service {name!r}: mount the {volume!r} volume read-only (it holds keys)"

    for name in SERVERS:
        settings = load_settings(name, monkeypatch)
        prefix = settings_class(name)[1]
        assert name in names, f"{CERTS!r} issues no certificate for {name!r}"
        for what, path, expected in (
            ("TLS_CERT", settings.tls_cert, pki.cert(name)),
            ("TLS_KEY", settings.tls_key, pki.key(name)),
            ("TLS_CA", settings.tls_ca, pki.ca),
        ):
            seen_by(name, path, f"{prefix}{what}")
            assert in_volume(name, str(path))[1] == written(expected)[1], (
                f"service {name!r}: {prefix}{what} = {path}, but its own is {expected.name}"
            )
        cert = x509.load_pem_x509_certificate(pki.cert(name).read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert name in sans.get_values_for_type(x509.DNSName), (
            f"the certificate of {name!r} does not name it: peers reach it at https://{name}:..."
        )
    client = parse_cli(CLIENT).params
    for option in ("tls_ca", "tls_cert", "tls_key"):
        seen_by(CLIENT, client[option], f"--{option.replace('_', '-')}")
    assert client["tls_cert"] is not None
    assert PurePosixPath(str(client["tls_cert"])).stem not in SERVERS, (
        f"{CLIENT!r} should present the operator's certificate, not a service's"
    )


@pytest.mark.parametrize("name", SERVERS)
def test_state_dir_is_a_writable_named_volume_of_its_own(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(name, monkeypatch)
    prefix = settings_class(name)[1]
    assert settings.state_dir.is_absolute(), (
        f"service {name!r}: set {prefix}STATE_DIR to a directory in a named volume "
        f"(got {settings.state_dir})"
    )
    volume, _, read_only = in_volume(name, settings.state_dir)
    assert not read_only, f"service {name!r}: its state dir is read-only"
    in_volume(name, settings.database_path)  # the SQLite file too
    for other in SERVERS:
        if other != name:
            assert volume not in {m[0] for m in mounts(other)}, (
                f"services {name!r} and {other!r} share the state volume {volume!r}"
            )


def test_volume_mount_points_belong_to_the_image_user() -> None:
    """A fresh named volume copies its mount point's owner: a missing one is root's."""
    users = instructions("USER")
    assert users, f"{DOCKERFILE.name} has no USER"
    user = users[-1][1].args.split(":")[0]
    made: set[PurePosixPath] = set()
    owned: set[PurePosixPath] = set()
    for _, ins in instructions("RUN"):
        for words in shell_commands(ins):
            args = [w for w in words[1:] if not w.startswith("-")]
            if words[0] == "mkdir":
                made.update(PurePosixPath(a) for a in args)
            elif words[0] == "chown" and args and args[0].split(":")[0] == user:
                owned.update(PurePosixPath(a) for a in args[1:])
    for name in [*SERVERS, *ONE_SHOT]:
        for source, target, _ in mounts(name):
            if source not in (compose().get("volumes") or {}):
                continue
            path = PurePosixPath(target)
            assert path in made, f"{DOCKERFILE.name} does not create {target} (service {name!r})"
            assert path in owned or owned & set(path.parents), (
                f"{DOCKERFILE.name} does not chown {target} to {user!r} (service {name!r})"
            )


# --------------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------------


def build_arg_defaults() -> dict[str, str]:
    defaults = {}
    for _, ins in instructions("ARG"):
        name, _, value = ins.args.partition("=")
        defaults[name.strip()] = value.strip()
    return defaults


def test_dockerfile_base_user_and_entrypoint() -> None:
    base = instructions("FROM")
    assert len(base) == 1, f"expected one FROM, got {[i.args for _, i in base]}"
    image = re.sub(r"\$\{(\w+)\}", lambda m: build_arg_defaults()[m.group(1)], base[0][1].args)
    m = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim\S*", image)
    assert m, f"the base image is {image!r}, expected python:3.X-slim"
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    assert f"{m.group(1)}.0" in requires, f"python {m.group(1)} does not satisfy {requires}"

    users = instructions("USER")
    assert users, f"{DOCKERFILE.name} runs as root: add a USER"
    user = users[-1][1].args.split(":")[0]
    assert user not in ("root", "0"), f"{DOCKERFILE.name} runs as {user!r}"
    index, _ = instructions("ENTRYPOINT")[-1]
    assert users[-1][0] < index, "USER must come before ENTRYPOINT"
    assert any(user in ins.args for _, ins in instructions("RUN")), f"no RUN creates {user!r}"

    scripts = list(pyproject()["project"]["scripts"])
    assert entrypoint() == scripts, (
        f"ENTRYPOINT should be {scripts} (pyproject's console script), got {entrypoint()}"
    )


LOCK = "requirements/lock.txt"
NO_DEPS = "requirements/crypten.txt"


def test_dockerfile_installs_like_the_makefile() -> None:
    """Every pip install takes its versions from the lock (or is crypten's hash-pinned --no-deps
    file), in the Makefile's order: torch (CPU index or a local wheel), crypten, the project."""
    steps: dict[str, int] = {}
    for index, ins in enumerate(dockerfile()):
        if ins.keyword != "RUN":
            continue
        for args in pip_installs(ins):
            if NO_DEPS in args:
                assert {"--no-deps", "--require-hashes"} <= set(args), args
                steps.setdefault("crypten", index)
                continue
            assert LOCK in args and args[args.index(LOCK) - 1] == "-c", (
                f"{DOCKERFILE.name}: `pip install {' '.join(args)}` does not use -c {LOCK}"
            )
            if "torch" in args:
                assert "requirements/torch_index.py" in ins.args and "--find-links" in ins.args
                steps.setdefault("torch", index)
            if "/build" in args:
                steps.setdefault("project", index)
    assert set(steps) == {"torch", "crypten", "project"}, steps
    assert steps["torch"] <= steps["crypten"] < steps["project"], steps
    assert {"TORCH_INDEX_URL", "TORCH_WHEEL_DIR"} <= set(build_arg_defaults())
    assert build_arg_defaults()["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    makefile = (ROOT / "Makefile").read_text()
    for line in makefile.splitlines():
        if "pip install" in line:
            assert "-c $(LOCK)" in line or NO_DEPS in line, f"Makefile: {line.strip()}"


def test_dockerfile_copies_every_package() -> None:
    sources: set[PurePosixPath] = set()
    for _, ins in instructions("COPY"):
        words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        sources.update(PurePosixPath(w.rstrip("/")) for w in words[:-1])
    project = pyproject()["project"]
    packages = {p.split(".")[0] for p in pyproject()["tool"]["setuptools"]["packages"]}
    needed = {"pyproject.toml", project["readme"], *packages}
    missing = {
        n for n in needed if PurePosixPath(n) not in sources and PurePosixPath(".") not in sources
    }
    assert not missing, f"{DOCKERFILE.name} does not COPY {sorted(missing)}"


# --------------------------------------------------------------------------------------------
# .env.example and .dockerignore
# --------------------------------------------------------------------------------------------


def test_env_example_lists_exactly_the_required_variables_without_values() -> None:
    required = {name for text in strings() for name in REQUIRED.findall(text)}
    assert required == variables(), (
        f"every substitution should be required (${{NAME:?...}}): {sorted(variables() - required)}"
    )
    assert ENV_EXAMPLE.exists(), f"{ENV_EXAMPLE.name} is missing"
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            entries[key.strip()] = value.strip()
    assert set(entries) == required, (
        f"{ENV_EXAMPLE.name} lists {sorted(entries)}, the compose file needs {sorted(required)}"
    )
    filled = sorted(k for k, v in entries.items() if v)
    assert not filled, f"{ENV_EXAMPLE.name} must not hold values (secrets): {filled}"


def test_dockerignore_keeps_secrets_and_the_venv_out_of_the_context() -> None:
    assert DOCKERIGNORE.exists(), f"{DOCKERIGNORE.name} is missing"
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".env", ".venv", ".git"):
        assert needed in patterns, f"{DOCKERIGNORE.name} does not exclude {needed}"


def test_interpolation_refuses_a_missing_token() -> None:
    """The stand-in for compose's substitution fails like compose does (so the checks above bite)."""
    raw = environment("model-owner")["MODEL_OWNER_API_TOKEN"]
    values = fake_values()
    assert interpolate(raw, values) == values["MODEL_OWNER_API_TOKEN"]
    with pytest.raises(AssertionError, match="MODEL_OWNER_API_TOKEN"):
        interpolate(raw, {**values, "MODEL_OWNER_API_TOKEN": ""})
