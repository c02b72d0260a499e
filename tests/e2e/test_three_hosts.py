"""docs/deployment.md, followed: the model owner, the data owner and the dealer on three "hosts",
three network namespaces joined by veth pairs, and a session across them.

    mo ──veth── do          198.18.1.1/30 ── 198.18.1.2/30
    mo ──veth── dealer      198.18.2.1/30 ── 198.18.2.2/30
    do ──veth── dealer      198.18.3.1/30 ── 198.18.3.2/30
    the dealer's own address 198.18.9.2, on its loopback, reached over either link

The model owner's namespace does not forward packets, so the session can only work if, as the
guide's firewall table says, the others reach nothing of the model owner's but its REST port and
rendezvous ports. Where iptables works in a namespace, the dealer admits from the data owner's link
only its REST port (the data owner gives it its key of their MPC link there; the MPC itself goes
through the model owner), and the model owner sits behind NAT as in the guide: the others reach it
at the public address 203.0.113.10, which its namespace translates to 198.18.1.1, the address its
workers bind (MODEL_OWNER_ADVERTISE_HOST=203.0.113.10, MODEL_OWNER_RENDEZVOUS_BIND=198.18.1.1);
elsewhere it advertises the address it binds. The certificates come from the guide's request-and-sign flow; each
service runs with the guide's settings (in a namespace of its own, so its ports are the guide's
8000-8002 and 29500-29509 without meeting anything else on this machine).

Skipped, saying why, only where network namespaces cannot be made (not root, no `ip`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.cli.stack import ROOT
from common.ml.examples import ExampleSplit
from common.web.tls import sign_request, write_ca, write_request
from tests.conftest import worker_pids

pytestmark = pytest.mark.mpc

PUBLIC = "203.0.113.10"  # the model owner's address as the others see it (behind NAT)
MO_DO, DO_MO = "198.18.1.1", "198.18.1.2"
MO_DL, DL_MO = "198.18.2.1", "198.18.2.2"
DO_DL, DL_DO = "198.18.3.1", "198.18.3.2"
DEALER = "198.18.9.2"  # the dealer's address, the same from both owners (one URL, one certificate)
PAIR = ["candidate_01", "candidate_10"]
TLS_VARS = ("DATA_APPRAISAL_TLS_CA", "DATA_APPRAISAL_TLS_CERT", "DATA_APPRAISAL_TLS_KEY")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_problem() -> str | None:
    """Why network namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"da-probe-{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    role: str  # model-owner, data-owner, dealer
    ns: str
    address: str  # where the others reach it (its REST URL's host)
    prefix: str
    port: int
    home: Path  # its own files: its key, certificate, state, log
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    def exec(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        """A command run on this host (in its namespace), e.g. the operator's CLI."""
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            capture_output=True,
            text=True,
            **kw,  # type: ignore[call-overload]
        )


@dataclass
class Deployment:
    hosts: dict[str, Host]
    root: Path
    nat: bool
    tokens: dict[str, str]
    operators: dict[str, tuple[str, str, str]]  # each host's operator's ca, cert and key files

    @property
    def mo(self) -> Host:
        return self.hosts["model-owner"]

    @property
    def do(self) -> Host:
        return self.hosts["data-owner"]

    @property
    def dealer(self) -> Host:
        return self.hosts["dealer"]


def make_namespaces(tag: str) -> tuple[dict[str, str], bool]:
    """The three hosts and their links; True if the model owner is behind NAT."""
    ns = {role: f"da{tag}-{role}" for role in ("model-owner", "data-owner", "dealer")}
    for name in ns.values():
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
    links = (
        ("data-owner", f"da{tag}mo1", f"da{tag}do1", MO_DO, DO_MO),
        ("dealer", f"da{tag}mo2", f"da{tag}dl2", MO_DL, DL_MO),
    )
    for role, mo_dev, dev, mo_addr, addr in links:
        ip("link", "add", mo_dev, "netns", ns["model-owner"], "type", "veth",
           "peer", "name", dev, "netns", ns[role])  # fmt: skip
        ip("-n", ns["model-owner"], "addr", "add", f"{mo_addr}/30", "dev", mo_dev)
        ip("-n", ns[role], "addr", "add", f"{addr}/30", "dev", dev)
        ip("-n", ns["model-owner"], "link", "set", mo_dev, "up")
        ip("-n", ns[role], "link", "set", dev, "up")
        # every other address (the public one) is reached through the model owner
        ip("-n", ns[role], "route", "add", "default", "via", mo_addr)
    do_dev, dl_dev = f"da{tag}do3", f"da{tag}dl3"
    ip("link", "add", do_dev, "netns", ns["data-owner"], "type", "veth",
       "peer", "name", dl_dev, "netns", ns["dealer"])  # fmt: skip
    ip("-n", ns["data-owner"], "addr", "add", f"{DO_DL}/30", "dev", do_dev)
    ip("-n", ns["dealer"], "addr", "add", f"{DL_DO}/30", "dev", dl_dev)
    ip("-n", ns["data-owner"], "link", "set", do_dev, "up")
    ip("-n", ns["dealer"], "link", "set", dl_dev, "up")
    ip("-n", ns["dealer"], "addr", "add", f"{DEALER}/32", "dev", "lo")
    ip("-n", ns["model-owner"], "route", "add", f"{DEALER}/32", "via", DL_MO)
    ip("-n", ns["data-owner"], "route", "add", f"{DEALER}/32", "via", DL_DO)
    # a host, not a router (a new namespace may inherit forwarding from this machine's)
    subprocess.run(
        ["ip", "netns", "exec", ns["model-owner"], "sh", "-c",
         "echo 0 > /proc/sys/net/ipv4/ip_forward"],
        check=True,
        timeout=30,
    )  # fmt: skip
    nat = False
    if shutil.which("iptables"):
        rule = ["-t", "nat", "-A", "PREROUTING", "-d", PUBLIC, "-p", "tcp"]
        rule += ["-j", "DNAT", "--to-destination", MO_DO]
        made = subprocess.run(
            ["ip", "netns", "exec", ns["model-owner"], "iptables", *rule],
            capture_output=True,
            text=True,
            timeout=30,
        )
        nat = made.returncode == 0
    if nat:  # from the data owner's link, the dealer admits its REST port and nothing else
        for rule in (
            ["-A", "INPUT", "-i", dl_dev, "-m", "conntrack", "--ctstate", "ESTABLISHED",
             "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", dl_dev, "-p", "tcp", "--dport", "8002", "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", dl_dev, "-j", "DROP"],
        ):  # fmt: skip
            subprocess.run(
                ["ip", "netns", "exec", ns["dealer"], "iptables", *rule], check=True, timeout=30
            )
    return ns, nat


def delete_namespaces(tag: str) -> None:
    for role in ("model-owner", "data-owner", "dealer"):
        ip("netns", "del", f"da{tag}-{role}", check=False)  # the veth pairs go with them


def issue_certificates(root: Path, hosts: dict[str, Host], nat: bool) -> dict[str, Path]:
    """The guide's flow: the CA holder makes the CA; each host makes its key and request; the CA
    holder signs; each host gets back its certificate and ca.pem. Each host's operator gets a
    client certificate the same way. Returns every file by "<role>.<what>"."""
    ca = write_ca(root / "ca-holder")
    files: dict[str, Path] = {"ca": ca.cert}
    for role, host in hosts.items():
        own = host.home / "tls"
        alt = [MO_DO] if role == "model-owner" and nat else []
        made = write_request(own, host.address, alt)
        signed = sign_request(made.request, ca_cert=ca.cert, ca_key=ca.key, out=root / "signed")
        shutil.copy(signed.cert, own)  # sent back to the host
        shutil.copy(ca.cert, own)
        files[f"{role}.cert"], files[f"{role}.key"] = own / signed.cert.name, made.key
        op = write_request(host.home / "operator", "operator")
        signed = sign_request(op.request, ca_cert=ca.cert, ca_key=ca.key, out=op.key.parent)
        files[f"{role}.operator.cert"], files[f"{role}.operator.key"] = signed.cert, op.key
    return files


def start(host: Host) -> None:
    host.log = host.home / "service.log"
    with open(host.log, "ab") as log:
        serve = [sys.executable, "-m", "common.cli", host.role, "serve"]
        host.process = subprocess.Popen(
            ["ip", "netns", "exec", host.ns, *serve, "--host", "0.0.0.0", "--port", str(host.port)],
            env={**os.environ, **host.env, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=host.home,
        )


def wait_started(host: Host, seconds: float = 120) -> None:
    assert host.process is not None and host.log is not None
    end = time.monotonic() + seconds
    while "Application startup complete" not in host.log.read_text(errors="replace"):
        assert host.process.poll() is None, f"{host.role} exited:\n{host.log.read_text()}"
        assert time.monotonic() < end, f"{host.role} did not start:\n{host.log.read_text()}"
        time.sleep(0.3)


def stop(host: Host) -> None:
    if host.process is not None and host.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.process.pid, signal.SIGTERM)
        try:
            host.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(host.process.pid, signal.SIGKILL)
            host.process.wait()


def configure(root: Path, split: ExampleSplit, ns: dict[str, str], nat: bool) -> Deployment:
    tokens = {
        name: secrets.token_urlsafe(32)
        for name in ("mo_api", "do_api", "dealer_api", "mo_at_do", "mo_at_dealer", "do_at_dealer")
    }
    mo_address = PUBLIC if nat else MO_DO
    hosts = {
        "model-owner": Host(
            "model-owner", ns["model-owner"], mo_address, "MODEL_OWNER_", 8000, root / "model-owner"
        ),
        "data-owner": Host(
            "data-owner", ns["data-owner"], DO_MO, "DATA_OWNER_", 8001, root / "data-owner"
        ),
        "dealer": Host("dealer", ns["dealer"], DEALER, "DEALER_", 8002, root / "dealer"),
    }
    files = issue_certificates(root, hosts, nat)
    data = root / "data-owner" / "data"
    data.mkdir(parents=True)
    for candidate in split.candidates:
        shutil.copy(candidate, data)
    dealer_url = hosts["dealer"].url
    mo, do = hosts["model-owner"], hosts["data-owner"]
    mo.env = {
        "MODEL_OWNER_API_TOKEN": tokens["mo_api"],
        "MODEL_OWNER_NAME": "model-owner",
        "MODEL_OWNER_TRAIN": str(split.train),
        "MODEL_OWNER_TEST": str(split.test),
        "MODEL_OWNER_DATA_OWNERS": json.dumps(
            {"data-owner": {"url": do.url, "token": tokens["mo_at_do"]}}
        ),
        "MODEL_OWNER_DEALER_URL": dealer_url,
        "MODEL_OWNER_DEALER_TOKEN": tokens["mo_at_dealer"],
        "MODEL_OWNER_ADVERTISE_HOST": mo_address,
        "MODEL_OWNER_RENDEZVOUS_BIND": MO_DO,
        "MODEL_OWNER_RENDEZVOUS_PORTS": "29500-29509",
    }
    do.env = {
        "DATA_OWNER_API_TOKEN": tokens["do_api"],
        # the model owner's token bound to its certificate's name; its REST URL for reports; the
        # rendezvous host its workers may connect to is that URL's host
        "DATA_OWNER_MODEL_OWNERS": json.dumps(
            {
                "model-owner": {
                    "token": tokens["mo_at_do"],
                    "certificate": mo.address,
                    "callback_url": mo.url,
                }
            }
        ),
        "DATA_OWNER_DEALERS": json.dumps(
            {"dealer": {"url": dealer_url, "token": tokens["do_at_dealer"]}}
        ),
        "DATA_OWNER_DATA_DIR": str(data),
    }
    hosts["dealer"].env = {
        "DEALER_API_TOKEN": tokens["dealer_api"],
        "DEALER_MODEL_OWNERS": json.dumps(
            {"model-owner": {"token": tokens["mo_at_dealer"], "certificate": mo.address}}
        ),
        "DEALER_DATA_OWNERS": json.dumps(
            {"data-owner": {"token": tokens["do_at_dealer"], "certificate": do.address}}
        ),
    }
    for role, host in hosts.items():
        p = host.prefix
        host.env.update(
            {
                f"{p}STATE_DIR": str(root / role / "state"),
                f"{p}TLS_CERT": str(files[f"{role}.cert"]),
                f"{p}TLS_KEY": str(files[f"{role}.key"]),
                f"{p}TLS_CA": str(root / role / "tls" / "ca.pem"),
            }
        )
    operators = {
        role: (
            str(files["ca"]),
            str(files[f"{role}.operator.cert"]),
            str(files[f"{role}.operator.key"]),
        )
        for role in hosts
    }
    return Deployment(hosts, root, nat, tokens, operators)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, digits_split: ExampleSplit
) -> Iterator[Deployment]:
    problem = netns_problem()
    if problem is not None:
        pytest.skip(f"network namespaces cannot be made here: {problem}")
    tag = secrets.token_hex(3)
    root = tmp_path_factory.mktemp("three-hosts")
    try:
        ns, nat = make_namespaces(tag)
        dep = configure(root, digits_split, ns, nat)
        for role in ("dealer", "data-owner", "model-owner"):
            start(dep.hosts[role])
        for host in dep.hosts.values():
            wait_started(host)
        yield dep
    finally:
        for role in ("model-owner", "data-owner", "dealer"):
            with contextlib.suppress(NameError, UnboundLocalError):
                stop(dep.hosts[role])
        delete_namespaces(tag)
        assert not [n for n in ip("netns", "list").stdout.split() if tag in n]


def operator_appraise(dep: Deployment, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """The model owner's operator, on the model owner's host: `data-appraisal appraise`."""
    argv = [sys.executable, "-m", "common.cli", "appraise", "--model-owner", url]
    argv += ["--data-owner", dep.do.url, "--json", *extra]
    for candidate in PAIR:
        argv += ["--dataset", candidate]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATA_APPRAISAL_TOKEN": dep.tokens["mo_api"],
        **dict(zip(TLS_VARS, dep.operators["model-owner"], strict=True)),
    }
    return dep.mo.exec(argv, env=env, timeout=600, cwd=dep.root)


GET = """
import json, sys
from pathlib import Path
import httpx
from common.web.tls import client_context
url, token, ca, cert, key = sys.argv[1:]
verify = client_context(Path(ca), Path(cert), Path(key))
r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30, verify=verify)
print(json.dumps(r.json()))
"""


def sessions_at(dep: Deployment, host: Host, token: str) -> list[dict[str, object]]:
    """The host's own view of its sessions, asked on that host by its operator."""
    address = MO_DO if host.role == "model-owner" else host.address  # the operator's side of NAT
    url = f"https://{address}:{host.port}/v1/sessions"
    argv = [sys.executable, "-c", GET, url, token, *dep.operators[host.role]]
    proc = host.exec(argv, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_a_session_across_three_hosts(deployment: Deployment) -> None:
    dep = deployment
    print(
        f"model owner at {dep.mo.address} ({'behind NAT to ' + MO_DO if dep.nat else 'no NAT'}), "
        f"data owner at {dep.do.address}, dealer at {dep.dealer.address}"
    )
    # the data owner reaches the dealer's REST port; nothing of the model owner's but its ports
    connect = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)"
    reach = dep.do.exec([sys.executable, "-c", connect, DEALER, "8002"], timeout=30)
    assert reach.returncode == 0, reach.stderr
    if dep.nat:  # and nothing else of the dealer's (its firewall)
        blocked = dep.do.exec([sys.executable, "-c", connect, DEALER, "29500"], timeout=30)
        assert "timed out" in blocked.stderr, blocked.stderr
    proc = operator_appraise(dep, f"https://{MO_DO}:8000")
    assert proc.returncode == 0, f"{proc.stderr}\n{dep.mo.log.read_text()[-3000:]}"  # type: ignore[union-attr]
    results = json.loads(proc.stdout)
    assert {r["candidate"] for r in results} == set(PAIR), results
    assert all(isinstance(r["score"], float) for r in results), results
    by_name = {r["candidate"]: r["score"] for r in results}
    assert by_name["candidate_01"] < by_name["candidate_10"]  # influence: the clean one first
    mo_session = sessions_at(dep, dep.mo, dep.tokens["mo_api"])[0]
    assert mo_session["state"] == "completed", mo_session
    assert str(mo_session["rendezvous"]).startswith(f"tcp://{dep.mo.address}:295"), mo_session
    for host, token in ((dep.do, dep.tokens["do_api"]), (dep.dealer, dep.tokens["dealer_api"])):
        view = next(v for v in sessions_at(dep, host, token) if v["id"] == mo_session["id"])
        assert view["state"] == "completed", (host.role, view)
    assert worker_pids() == []


@pytest.fixture
def loopback_model_owner(deployment: Deployment) -> Iterator[Host]:
    """A second model owner on the same host left at the default MODEL_OWNER_ADVERTISE_HOST
    (127.0.0.1): its REST API is reachable, its rendezvous only from its own host."""
    mo = deployment.mo
    home = deployment.root / "loopback-model-owner"
    home.mkdir()
    env = {k: v for k, v in mo.env.items() if "RENDEZVOUS" not in k and "ADVERTISE" not in k}
    env.update(
        {
            "MODEL_OWNER_STATE_DIR": str(home / "state"),
            "MODEL_OWNER_RENDEZVOUS_PORTS": "29510-29519",
            "MODEL_OWNER_RENDEZVOUS_TIMEOUT": "5",
        }
    )
    host = Host("model-owner", mo.ns, mo.address, mo.prefix, 8010, home, env)
    start(host)
    try:
        wait_started(host)
        yield host
    finally:
        stop(host)


def test_a_loopback_rendezvous_is_refused_at_once_saying_why(
    deployment: Deployment, loopback_model_owner: Host
) -> None:
    """A model owner left at MODEL_OWNER_ADVERTISE_HOST=127.0.0.1 with its data owner elsewhere:
    the data owner connects only to the hosts it has for that model owner, so it refuses the
    invitation at once (rather than its worker reaching its own loopback and the session expiring
    at the rendezvous deadline), and the reason says what to set."""
    dep = deployment
    start = time.monotonic()
    proc = operator_appraise(dep, f"https://{MO_DO}:8010")
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout
    mo_view = sessions_at(dep, loopback_model_owner, dep.tokens["mo_api"])[0]
    print(json.dumps({"model owner": mo_view["reason"], "seconds": round(took, 1)}))
    assert mo_view["state"] == "rejected", mo_view
    reason = str(mo_view["reason"])
    assert "rendezvous host '127.0.0.1'" in reason and "a loopback address" in reason, reason
    assert "MODEL_OWNER_ADVERTISE_HOST" in reason, reason
    assert "MODEL_OWNER_ADVERTISE_HOST" in proc.stderr, proc.stderr
    assert worker_pids() == []
