"""End to end: the dealer, the data owner and the model owner as real uvicorn processes on free
ports, their workers computing real MPC over TCP on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.cli.stack import (
    ROOT,
    Service,
    Stack,
    local_stack,
    start_service,
    stop_service,
    wait_healthy,
)
from common.ml.examples import ExampleSplit
from common.runtime.local import plaintext_scores, run_local
from common.runtime.supervisor import free_port
from tests.conftest import worker_pids

PREFIXES = ("MODEL_OWNER_", "DATA_OWNER_", "DEALER_")

pytestmark = pytest.mark.mpc
PAIR = ("candidate_01", "candidate_10")
TERMINAL = {"completed", "failed", "rejected", "cancelled", "expired"}


def make_stack(root: Path, split: ExampleSplit) -> Iterator[Stack]:
    data = root / "candidates"
    data.mkdir(parents=True)
    for c in split.candidates:
        shutil.copy(c, data)
    with local_stack(root / "services", train=split.train, test=split.test, data_dir=data) as s:
        yield s


@pytest.fixture
def fresh_stack(tmp_path: Path, digits_split: ExampleSplit) -> Iterator[Stack]:
    yield from make_stack(tmp_path, digits_split)


def open_session(stack: Stack, **body: Any) -> dict[str, Any]:
    payload = {"data_owner_url": stack.data_owner.url, "datasets": list(PAIR), **body}
    with stack.model_owner.client() as c:
        response = c.post("/v1/sessions", json=payload)
    assert response.status_code == 201, response.text
    view = dict(response.json())
    assert view["state"] == "accepted", view
    return view


def get(service: Service, session_id: str) -> dict[str, Any]:
    with service.client() as c:
        response = c.get(f"/v1/sessions/{session_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(service: Service, session_id: str, states: set[str], seconds: float) -> dict[str, Any]:
    end = time.monotonic() + seconds
    while True:
        view = get(service, session_id)
        if view["state"] in states:
            return view
        assert time.monotonic() < end, f"{service.name}: {view}"
        time.sleep(0.2)


def test_concurrent_sessions_of_every_method_and_reveal_mode(
    stack: Stack, digits_split: ExampleSplit
) -> None:
    """Eight sessions at once (each method, each reveal mode, and two more influence sessions,
    the service's default limit) while `local` runs beside them: none expires."""
    files = [digits_split.candidates[0], digits_split.candidates[9]]
    methods = {"influence": {}, "gradient-norm": {}, "finetune": {"steps": 4, "lr": 0.1}}
    plain = {
        m: plaintext_scores(
            method=m, train=digits_split.train, test=digits_split.test, candidates=files, **p
        )
        for m, p in methods.items()
    }
    sessions = []
    for method, params in methods.items():
        a, b = plain[method]
        sessions.append((method, "score", open_session(stack, method=method, params=params)))
        sessions.append(
            (
                method,
                "threshold",
                open_session(
                    stack, method=method, params=params, reveal="threshold", threshold=(a + b) / 2
                ),
            )
        )
    sessions += [("influence", "score", open_session(stack, method="influence")) for _ in "ab"]
    assert len(sessions) == 8
    ports = {v["rendezvous"] for _, _, v in sessions}
    assert len(ports) == len(sessions)  # every session has its own rendezvous port
    # meanwhile, `data-appraisal local` on the same data: the service must agree with it
    local = run_local(
        method="influence", train=digits_split.train, test=digits_split.test, candidates=files
    )
    for method, reveal, view in sessions:
        ours = wait_for(stack.model_owner, view["id"], TERMINAL, 300)
        assert ours["state"] == "completed", ours["reason"]
        theirs = wait_for(stack.data_owner, view["id"], TERMINAL, 30)
        dealer = wait_for(stack.dealer, view["id"], TERMINAL, 30)
        assert theirs["state"] == dealer["state"] == "completed", (theirs, dealer)
        higher_is_better = method == "gradient-norm"
        tau = sum(plain[method]) / 2
        for r, their, expected in zip(
            ours["results"], theirs["results"], plain[method], strict=True
        ):
            assert (r["score"], r["accept"]) == (their["score"], their["accept"])
            if reveal == "score":
                assert r["accept"] is None
                assert r["score"] == pytest.approx(expected, rel=1e-3, abs=1e-3), (method, r)
        if (method, reveal) == ("influence", "score"):
            for r, local_result in zip(ours["results"], local.results, strict=True):
                assert r["score"] == pytest.approx(local_result.score, abs=1e-4)
        for r, expected in zip(ours["results"], plain[method], strict=True):
            if reveal == "threshold":
                assert r["score"] is None  # only the bit is revealed
                assert r["accept"] == (expected > tau if higher_is_better else expected < tau)


def test_appraise_command_prints_the_same_shape_as_local(stack: Stack) -> None:
    env = {
        **os.environ,
        **stack.model_owner.client_env(),  # the stack's CA and the operator's certificate
        "DATA_APPRAISAL_TOKEN": stack.model_owner.token,
    }
    command = [
        sys.executable,
        "-m",
        "common.cli",
        "appraise",
        "--model-owner",
        stack.model_owner.url,
    ]
    command += ["--data-owner", stack.data_owner.url, "--dataset", PAIR[0], "--dataset", PAIR[1]]
    done = subprocess.run(
        [*command, "--json"], env=env, capture_output=True, text=True, timeout=180, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["candidate"] for r in rows] == list(PAIR)
    assert set(rows[0]) == {
        "candidate",
        "method",
        "score",
        "seconds",
        "bytes_sent",
        "bytes_received",
        "rounds",
        "peak_rss_mb",
    }
    assert rows[0]["score"] < rows[1]["score"]  # the clean candidate is appraised better
    # the model owner's log: JSON lines, this session's transitions, no line per poll
    lines = [json.loads(line) for line in stack.model_owner.log_path.read_text().splitlines()]
    assert {line["service"] for line in lines} == {"model-owner"}
    session_id = done.stderr.split()[1]  # "session <id> accepted ..." comes first
    ours = [line for line in lines if line.get("session") == session_id]
    assert [line["state"] for line in ours] == ["proposed", "accepted", "running", "completed"]
    assert all(line["role"] == "model_owner" for line in ours)
    polls = [line for line in lines if f"GET /v1/sessions/{session_id}" in line["message"]]
    assert polls == [] and any('"POST /v1/sessions' in line["message"] for line in lines)
    # a refused session is an error line naming the cause, not a traceback
    bad = subprocess.run(
        [*command[:-4], "--dataset", "candidate_99"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 1 and "candidate_99" in bad.stderr and "Traceback" not in bad.stderr
    no_token = {
        k: v for k, v in env.items() if k not in ("DATA_APPRAISAL_TOKEN", "MODEL_OWNER_API_TOKEN")
    }
    refused = subprocess.run(
        command, env=no_token, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert refused.returncode == 1 and "DATA_APPRAISAL_TOKEN" in refused.stderr


LONG = {"method": "finetune", "params": {"steps": 400, "lr": 0.1}}  # minutes if not stopped


def cli_env(stack: Stack) -> dict[str, str]:
    return {
        **os.environ,
        **stack.model_owner.client_env(),
        "DATA_APPRAISAL_TOKEN": stack.model_owner.token,
        "DATA_APPRAISAL_MODEL_OWNER": stack.model_owner.url,
    }


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli", *args],
        env=cli_env(stack),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def interrupted_appraise(stack: Stack, *flags: str) -> tuple[str, int, str]:
    """Start ``appraise`` on a long session, press Ctrl-C once it is running; (id, status, stderr)."""
    command = [sys.executable, "-m", "common.cli", "appraise", "--data-owner", stack.data_owner.url]
    command += ["--dataset", PAIR[0], "--method", "finetune", "--steps", "400", *flags]
    with subprocess.Popen(
        command, env=cli_env(stack), stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as process:
        assert process.stderr is not None
        first = process.stderr.readline()  # the session id comes first
        assert first.startswith("session "), first
        session_id = first.split()[1]
        wait_for(stack.model_owner, session_id, {"running"}, 60)
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        return session_id, process.wait(timeout=30), rest


def test_an_interrupted_appraise_leaves_a_session_the_cli_can_list_show_follow_and_cancel(
    stack: Stack,
) -> None:
    session_id, status, stderr = interrupted_appraise(stack)
    assert status == 130
    assert f"sessions cancel {session_id}" in stderr and "Traceback" not in stderr  # not orphaned
    listed = cli(stack, "sessions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (ours,) = [v for v in json.loads(listed.stdout) if v["id"] == session_id]
    assert ours["state"] == "running"
    table = cli(stack, "sessions", "list", "--state", "running")
    assert session_id in table.stdout and "finetune" in table.stdout
    shown = cli(stack, "sessions", "show", session_id)
    assert shown.returncode == 0 and "400 steps" in shown.stdout, shown
    cancelled = cli(stack, "sessions", "cancel", session_id, "--reason", "enough")
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stderr, cancelled
    assert get(stack.model_owner, session_id)["state"] == "cancelled"
    followed = cli(stack, "sessions", "follow", session_id)
    assert (
        followed.returncode == 1 and "cancelled" in followed.stderr and "enough" in followed.stderr
    )
    unknown = cli(stack, "sessions", "show", "f" * 32)
    assert unknown.returncode == 1 and "404" in unknown.stderr and "Traceback" not in unknown.stderr

    # --cancel-on-interrupt cancels at once, and the workers stop
    session_id, status, stderr = interrupted_appraise(stack, "--cancel-on-interrupt")
    assert status == 130 and f"session {session_id} cancelled" in stderr, stderr
    assert get(stack.model_owner, session_id)["state"] == "cancelled"
    end = time.monotonic() + 15
    while worker_pids() and time.monotonic() < end:
        time.sleep(0.2)
    assert worker_pids() == []

    # follow prints the results of a session that completes
    view = open_session(stack, method="gradient-norm")
    followed = cli(stack, "sessions", "follow", view["id"], "--json")
    assert followed.returncode == 0, followed.stderr
    assert [r["candidate"] for r in json.loads(followed.stdout)] == list(PAIR)


def test_the_client_example_in_the_docs_runs(stack: Stack) -> None:
    """docs/client.md's example, pointed at this stack, prints a frame of both candidates."""
    text = (ROOT / "docs" / "client.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert stack.pki is not None
    for example, ours in {
        "https://mo.example.org:8000": stack.model_owner.url,
        "https://data.acme.org:8001": stack.data_owner.url,
        'Path("tls")': f"Path({str(stack.pki.directory)!r})",
    }.items():
        assert example in code
        code = code.replace(example, ours)
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DATA_APPRAISAL_TOKEN": stack.model_owner.token},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("session ")
    assert re.search(r"candidate_01\s+-0\.\d+", done.stdout), done.stdout
    assert "candidate_10" in done.stdout and "'completed'" in done.stdout


def test_the_health_command_checks_each_running_service(stack: Stack) -> None:
    """`data-appraisal health SERVICE` (the image's HEALTHCHECK) asks that service on this host
    with the service's own settings: its port, CA and certificate (mutual TLS)."""
    for service in (stack.model_owner, stack.data_owner, stack.dealer):
        port = service.url.rsplit(":", 1)[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
        done = subprocess.run(
            [sys.executable, "-m", "common.cli", "health", service.name, "--port", port],
            env={**env, **service.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"https://127.0.0.1:{port}/v1/health" in done.stdout, done.stdout
    # a service that is not there fails the check, saying where it asked
    free = str(free_port())
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "health", "dealer", "--port", free],
        env={**env, **stack.dealer.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout
    assert f"dealer at https://127.0.0.1:{free}/v1/health: no answer" in done.stderr, done.stderr


def test_cancel_by_the_data_owner_stops_every_worker(stack: Stack) -> None:
    view = open_session(stack, **LONG)
    wait_for(stack.model_owner, view["id"], {"running"}, 60)
    with stack.data_owner.client() as c:
        response = c.post(f"/v1/sessions/{view['id']}/cancel", json={"reason": "changed my mind"})
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    ours = wait_for(stack.model_owner, view["id"], TERMINAL, 30)
    # the peers hear of the cancel before the data owner's worker stops: they record it as such,
    # not as the broken connection that follows
    assert ours["state"] == "cancelled" and "changed my mind" in ours["reason"], ours
    dealer = wait_for(stack.dealer, view["id"], TERMINAL, 30)
    assert dealer["state"] == "cancelled" and "changed my mind" in dealer["reason"], dealer
    end = time.monotonic() + 15
    while worker_pids() and time.monotonic() < end:
        time.sleep(0.2)
    assert worker_pids() == []


def test_a_session_killed_after_its_first_candidate_keeps_that_result(stack: Stack) -> None:
    """The first score was revealed and charged: both sides store and show it after the data
    owner's worker is killed during the second candidate."""
    view = open_session(stack, method="finetune", params={"steps": 15, "lr": 0.1})
    end = time.monotonic() + 120
    while not (ours := get(stack.model_owner, view["id"]))["results"]:
        assert ours["state"] not in TERMINAL and time.monotonic() < end, ours
        time.sleep(0.1)
    assert ours["state"] == "running", ours
    (pid,) = worker_pids(role="data_owner")
    os.kill(pid, signal.SIGKILL)
    ours = wait_for(stack.model_owner, view["id"], TERMINAL, 60)
    theirs = wait_for(stack.data_owner, view["id"], TERMINAL, 30)
    assert ours["state"] == theirs["state"] == "failed", (ours, theirs)
    for side in (ours, theirs):
        assert [r["candidate"] for r in side["results"]] == [PAIR[0]], side
        assert side["charged"] == 2  # the second candidate entered the MPC too
    assert ours["results"][0]["score"] == theirs["results"][0]["score"]  # each counts its own bytes
    end = time.monotonic() + 15
    while worker_pids() and time.monotonic() < end:
        time.sleep(0.2)
    assert worker_pids() == []


def test_killed_peer_fails_both_sides_and_restarts_lose_nothing(fresh_stack: Stack) -> None:
    first = open_session(fresh_stack, method="gradient-norm")
    assert wait_for(fresh_stack.model_owner, first["id"], TERMINAL, 120)["state"] == "completed"
    view = open_session(fresh_stack, **LONG)
    wait_for(fresh_stack.model_owner, view["id"], {"running"}, 60)
    do = fresh_stack.data_owner
    killed_at = time.monotonic()
    os.kill(do.process.pid, signal.SIGKILL)  # the whole data-owner service, mid-computation
    do.process.wait()
    ours = wait_for(fresh_stack.model_owner, view["id"], TERMINAL, 90)
    assert ours["state"] == "failed", ours
    assert time.monotonic() - killed_at < 90
    assert "data owner" in ours["reason"] or "worker failed" in ours["reason"], ours["reason"]
    end = time.monotonic() + 15  # the orphaned data-owner worker notices and exits
    while worker_pids() and time.monotonic() < end:
        time.sleep(0.2)
    assert worker_pids() == []

    # the restarted data owner still has both sessions; the interrupted one failed, with its cause
    port = int(do.url.rsplit(":", 1)[1])
    fresh_stack.data_owner = start_service(
        "data-owner", port, do.env, fresh_stack.workdir, do.token
    )
    wait_healthy(fresh_stack.data_owner)
    assert get(fresh_stack.data_owner, first["id"])["state"] == "completed"
    theirs = get(fresh_stack.data_owner, view["id"])
    assert theirs["state"] == "failed" and "service stopped" in theirs["reason"]
    # and so does a restarted model owner, results included
    mo = fresh_stack.model_owner
    stop_service(mo)
    fresh_stack.model_owner = start_service(
        "model-owner", int(mo.url.rsplit(":", 1)[1]), mo.env, fresh_stack.workdir, mo.token
    )
    wait_healthy(fresh_stack.model_owner)
    again = get(fresh_stack.model_owner, first["id"])
    assert again["state"] == "completed" and len(again["results"]) == 2
    assert get(fresh_stack.model_owner, view["id"])["state"] == "failed"


def test_demo_command_ranks_every_candidate(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "common.cli", "demo", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 10
    # every score is the MPC appraisal of that candidate (its plaintext twin's, to 1e-3), and the
    # ranking is the plaintext ranking (best, the lowest influence score, first)
    data = tmp_path / "data"
    files = {r["candidate"]: data / "data_owner" / f"{r['candidate']}.npz" for r in rows}
    plain = dict(
        zip(
            files,
            plaintext_scores(
                train=data / "model_owner" / "train.npz",
                test=data / "model_owner" / "test.npz",
                candidates=list(files.values()),
            ),
            strict=True,
        )
    )
    for r in rows:
        assert r["score"] == pytest.approx(plain[r["candidate"]], abs=1e-3), r
    for better, worse in itertools.pairwise(rows):
        assert plain[better["candidate"]] <= plain[worse["candidate"]] + 1e-3, (better, worse)
    noise = [r["label_noise"] for r in rows]
    # the cleanest candidates rank above the noisiest: label noise degrades the appraisal
    assert max(noise[:3]) < min(noise[-3:])
    logs = list((tmp_path / "services").glob("*.log"))
    assert len(logs) == 3
    for log in logs:
        text = log.read_text()
        assert "Traceback" not in text and "Application shutdown complete" in text, log
