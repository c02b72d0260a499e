"""``make compose-test``: run docker-compose.yml for real and check what it does.

    python -m tests.e2e.compose_demo [--keep-image]

It builds the image with ``docker compose build`` (torch from a local CPU wheel when pip's
find-links or ``TORCH_WHEEL`` has one, copied into the git-ignored ``wheels/``; else PyTorch's CPU
index), then runs the commands docker-compose.yml's header documents, under a project name of its
own, fresh tokens and free host ports (so it never meets another run or a demo):

1. ``up -d``: the one-shot ``certs`` and ``example-data``, the three services (each must become
   healthy, run as the image's unprivileged user), and the ``appraise`` client, whose exit status
   must be 0 and whose table must list the ten candidates;
2. ``run --rm appraise ... --json``: the same appraisal again, every candidate scored, the clean
   candidates ranked above the noisy ones;
3. ``run --rm certs --overwrite`` and ``restart`` of the services: a fresh CA, and the services
   healthy again on it;
4. ``down -v``, always, also after a failure (then with every service's log tail first).

Works with Compose v2 (``docker compose``) and v1 (``docker-compose``). Exits 0 when every check
passed, 1 when one failed, 2 when no Docker engine or Compose is reachable.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import yaml

from common.runtime.supervisor import free_port
from common.web.tls import ClientTLS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
WHEELS = ROOT / "wheels"  # git-ignored; the Dockerfile's TORCH_WHEEL_DIR
TORCH_WHEEL = "torch-2.13.0+cpu-*.whl"
SERVERS = ("dealer", "data-owner", "model-owner")
# the tokens .env.example asks for, each given a fresh secret (one list, so they cannot drift)
TOKENS = tuple(
    re.findall(r"^([A-Z_]+_TOKEN)=$", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
)
HOST_PORTS = ("MODEL_OWNER_HOST_PORT", "DATA_OWNER_HOST_PORT", "DEALER_HOST_PORT")
APPRAISE_SECONDS = 900.0
HEALTHY_SECONDS = 300.0


class Unavailable(Exception):
    """No Docker engine or no Compose here: nothing can be checked."""


class Failed(Exception):
    """A check failed."""


def say(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def compose_command() -> list[str]:
    """``docker compose`` (v2) if the plugin is there, else ``docker-compose`` (v1)."""
    if shutil.which("docker") is None:
        raise Unavailable("no docker command on PATH")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        raise Unavailable(f"no Docker engine answers `docker info`: {info.stderr.strip()[:300]}")
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
    if v2.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    raise Unavailable("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")


def local_torch_wheel() -> Path | None:
    """A torch CPU wheel of the lock's version in TORCH_WHEEL or pip's find-links, if any."""
    if os.environ.get("TORCH_WHEEL"):
        return Path(os.environ["TORCH_WHEEL"])
    for directory in os.environ.get("PIP_FIND_LINKS", "").split():
        found = sorted(glob.glob(os.path.join(directory.removeprefix("file://"), TORCH_WHEEL)))
        if found:
            return Path(found[-1])
    return None


class Demo:
    """One run of the compose file under a project name of its own."""

    def __init__(self, compose: Sequence[str]) -> None:
        self.compose = list(compose)
        self.project = f"dacompose{secrets.token_hex(4)}"
        self.env = {**os.environ, **{t: secrets.token_urlsafe(32) for t in TOKENS}}
        self.env.update({p: str(free_port()) for p in HOST_PORTS})
        self.env.pop("COMPOSE_PROJECT_NAME", None)
        self.env.pop("COMPOSE_FILE", None)
        spec = yaml.safe_load(COMPOSE_FILE.read_text())
        self.appraise_command: list[str] = list(spec["services"]["appraise"]["command"])

    def run(
        self, *args: str, timeout: float = 600, check: bool = True, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = [*self.compose, "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        if not quiet:
            say("$ " + " ".join(COMPOSE_FILE.name if a == str(COMPOSE_FILE) else a for a in argv))
        proc = subprocess.run(
            argv, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise Failed(
                f"`{' '.join(args)}` exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def container(self, service: str) -> str:
        ids = self.run("ps", "-a", "-q", service, quiet=True).stdout.split()
        if len(ids) != 1:
            raise Failed(f"expected one {service} container, found {ids}")
        return ids[0]

    def inspect(self, service: str, template: str) -> str:
        proc = subprocess.run(
            ["docker", "inspect", "-f", template, self.container(service)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return proc.stdout.strip()

    # -- the checks ---------------------------------------------------------------------------------

    def build(self) -> None:
        wheel = local_torch_wheel()
        if wheel is not None:
            WHEELS.mkdir(exist_ok=True)
            target = WHEELS / wheel.name
            if not target.exists() or target.stat().st_size != wheel.stat().st_size:
                shutil.copy(wheel, target)
            self.env["TORCH_WHEEL_DIR"] = "wheels"
            say(f"torch from the local wheel {wheel.name} (TORCH_WHEEL_DIR=wheels)")
        else:
            say("torch from PyTorch's CPU index (no local wheel in TORCH_WHEEL or find-links)")
        start = time.monotonic()
        self.run("build", timeout=3600)
        image = yaml.safe_load(COMPOSE_FILE.read_text())["x-app"]["image"]
        size = subprocess.run(
            ["docker", "image", "inspect", "-f", "{{.Size}}", image],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        say(f"built {image} in {time.monotonic() - start:.0f} s: {int(size) / 1e9:.2f} GB")

    def wait_healthy(self) -> None:
        end = time.monotonic() + HEALTHY_SECONDS
        while True:
            states = {s: self.inspect(s, "{{.State.Health.Status}}") for s in SERVERS}
            if all(v == "healthy" for v in states.values()):
                say(f"healthy: {', '.join(SERVERS)}")
                return
            if time.monotonic() > end:
                raise Failed(f"not healthy within {HEALTHY_SECONDS:g} s: {states}")
            time.sleep(2)

    def up(self) -> None:
        self.run("config", "-q")
        self.run("up", "-d", timeout=HEALTHY_SECONDS + 300)
        self.wait_healthy()
        for service in SERVERS:
            user = self.inspect(service, "{{.Config.User}}")
            uid = self.run("exec", "-T", service, "id", "-u", quiet=True).stdout.strip()
            if user in ("", "root", "0") or uid == "0":
                raise Failed(f"{service} runs as root (user {user!r}, uid {uid})")
        say(f"every service runs as {user!r} (uid {uid})")
        self.from_the_host()
        proc = subprocess.run(
            ["docker", "wait", self.container("appraise")],
            capture_output=True,
            text=True,
            timeout=APPRAISE_SECONDS,
        )
        log = self.run("logs", "--no-color", "appraise", quiet=True).stdout
        print(log, flush=True)
        if proc.stdout.strip() != "0":
            raise Failed(f"the appraise client exited with {proc.stdout.strip() or proc.stderr}")
        missing = [f"candidate_{i:02d}" for i in range(1, 11) if f"candidate_{i:02d}" not in log]
        if missing:
            raise Failed(f"the appraisal's table lacks {missing}")
        say("`up -d`: the appraise client exited 0 with all ten candidates in its table")

    def from_the_host(self) -> None:
        """The README's way to reach a published port: the operator's files copied out."""
        with tempfile.TemporaryDirectory() as d:
            for name in ("ca.pem", "operator.pem", "operator.key"):
                out = self.run("exec", "-T", "model-owner", "cat", f"/tls/{name}", quiet=True)
                Path(d, name).write_text(out.stdout)
            os.chmod(Path(d, "operator.key"), 0o600)
            tls = ClientTLS(Path(d, "ca.pem"), Path(d, "operator.pem"), Path(d, "operator.key"))
            url = f"https://127.0.0.1:{self.env['MODEL_OWNER_HOST_PORT']}/v1/health"
            response = httpx.get(url, verify=tls.context(), timeout=30)
        if response.status_code != 200:
            raise Failed(f"{url} answered {response.status_code} from the host")
        say(f"from the host: {url} answers 200 to the operator's certificate")

    def appraise_again(self) -> None:
        proc = self.run("run", "--rm", "appraise", *self.appraise_command, "--json", timeout=900)
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        scores = {row["candidate"]: row["score"] for row in rows}
        if sorted(scores) != [f"candidate_{i:02d}" for i in range(1, 11)]:
            raise Failed(f"`run --rm appraise --json` scored {sorted(scores)}")
        if not all(isinstance(v, float) for v in scores.values()):
            raise Failed(f"a candidate has no score: {scores}")
        # influence: lower is better; candidate p has its labels 1 and 7 swapped with p/10
        clean = sum(scores[f"candidate_0{i}"] for i in (1, 2, 3)) / 3
        noisy = sum(scores[f"candidate_{i:02d}"] for i in (8, 9, 10)) / 3
        if not clean < noisy:
            raise Failed(f"the clean candidates do not rank above the noisy ones: {scores}")
        for name, score in sorted(scores.items(), key=lambda kv: kv[1]):
            say(f"  {name}  {score:+.6f}")
        say("`run --rm appraise --json`: ten scores, the clean candidates first")

    def new_certificates(self) -> None:
        ca = "cat /tls/ca.pem"
        before = self.run("exec", "-T", "dealer", "sh", "-c", ca, quiet=True).stdout
        proc = self.run("run", "--rm", "certs", "--overwrite")
        if "wrote /tls/ca.pem" not in proc.stderr + proc.stdout:
            raise Failed(f"`run --rm certs --overwrite` wrote no new set: {proc.stderr}")
        self.run("restart", *SERVERS, timeout=300)
        self.wait_healthy()
        after = self.run("exec", "-T", "dealer", "sh", "-c", ca, quiet=True).stdout
        if before == after:
            raise Failed("the services still hold the old CA")
        say("`run --rm certs --overwrite` + `restart`: a new CA, every service healthy on it")

    def logs(self) -> None:
        proc = self.run("logs", "--no-color", "--tail", "40", check=False, quiet=True)
        print(proc.stdout, proc.stderr, flush=True)

    def down(self) -> None:
        self.run("down", "-v", "--remove-orphans", timeout=300, check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    try:
        compose = compose_command()
    except Unavailable as exc:
        say(f"skipped: {exc}")
        return 2
    say(f"with {' '.join(compose)}")
    demo = Demo(compose)
    start = time.monotonic()
    try:
        demo.build()
        demo.up()
        demo.appraise_again()
        demo.new_certificates()
    except (Failed, subprocess.TimeoutExpired) as exc:
        say(f"FAILED: {exc}")
        demo.logs()
        return 1
    finally:
        demo.down()
    say(f"passed in {time.monotonic() - start:.0f} s (the stack is down)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
