"""Shared fixtures: the bundled digits split and the MNIST-sized offline case, written once; the
shared stack of real services; the in-process apps (``tests/apps.py``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from common.cli.stack import Stack, local_stack
from common.errors import MPCRunError
from common.ml.data import save_npz
from common.ml.examples import ExampleSplit, mnist_like, write_example_data
from common.runtime.worker import PROCESS_NAMES
from common.web.tls import Pki, write_demo_pki

pytest_plugins = ["tests.apps"]


@pytest.fixture(scope="session")
def digits_split(tmp_path_factory: pytest.TempPathFactory) -> ExampleSplit:
    return write_example_data(tmp_path_factory.mktemp("digits"), seed=0)


@pytest.fixture(scope="session")
def service_stack(
    tmp_path_factory: pytest.TempPathFactory, digits_split: ExampleSplit
) -> Iterator[Stack]:
    """One stack of the three real services (uvicorn processes on free ports, mutual TLS) shared
    by every test that does not restart or kill a service; the data owner holds the ten digits
    candidates."""
    root = tmp_path_factory.mktemp("stack")
    data = root / "candidates"
    data.mkdir()
    for c in digits_split.candidates:
        shutil.copy(c, data)
    with local_stack(
        root / "services", train=digits_split.train, test=digits_split.test, data_dir=data
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def stack(service_stack: Stack) -> Stack:
    """The shared stack, by the name the e2e modules use."""
    return service_stack


@pytest.fixture(scope="module")
def pki(stack: Stack) -> Pki:
    """The shared stack's private CA and its certificates."""
    assert stack.pki is not None
    return stack.pki


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA, with certificates of the same names: what an impostor could make itself."""
    return write_demo_pki(tmp_path_factory.mktemp("rogue"))


@dataclass(frozen=True)
class MnistFiles:
    train: Path
    test: Path
    clean: Path  # 6,000 samples × 784 features, 10 classes, values in [0, 1]
    noisy: Path  # the same draw with half of the labels replaced at random


@pytest.fixture(scope="session")
def mnist_files(tmp_path_factory: pytest.TempPathFactory) -> MnistFiles:
    root = tmp_path_factory.mktemp("mnist")
    train, test, cand = mnist_like(n_candidate=6000, n_train=600, n_test=1000, seed=0)
    rng = np.random.default_rng(1)
    y_noisy = cand.y.copy()
    flip = rng.random(len(y_noisy)) < 0.5
    y_noisy[flip] = rng.integers(0, 10, flip.sum())
    files = MnistFiles(
        root / "train.npz", root / "test.npz", root / "clean.npz", root / "noisy.npz"
    )
    save_npz(files.train, train)
    save_npz(files.test, test)
    save_npz(files.clean, cand)
    save_npz(files.noisy, (cand.X, y_noisy))
    return files


def supervised(configs: list, work: Path, *, rendezvous: float = 60, compute: float = 120):
    """Start the parties of ``configs`` and follow them with the one supervisor; its RunReport."""
    import asyncio

    from common.runtime.supervisor import start_party, supervise

    async def run():  # type: ignore[no-untyped-def]
        parties = [start_party(c, work) for c in configs]
        return await supervise(parties, rendezvous_seconds=rendezvous, compute_seconds=compute)

    return asyncio.run(run())


ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def stand_in_party(
    module: str, config, work: Path, *args: str, name: str | None = None
) -> Iterator[None]:
    """A party's process running the test module ``module`` (a real worker with behaviour
    injected, or an attacker) on ``config``, written 0600 into ``work``; its output goes to
    ``work/<name>.log`` (``name`` the module's, unless one module stands in for several
    parties). The block runs the other parties; the process is waited for after it."""
    import subprocess
    import sys

    name = name or module.rsplit(".", 1)[-1]
    path = work / f"{name}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config.model_dump_json())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(work / f"{name}.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(path), *args],
            env=env,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# Tag every process this test session starts, so that leftover workers are ours, not another run's.
SESSION_TAG = f"DATA_APPRAISAL_TEST_SESSION={uuid.uuid4().hex}"
os.environ["DATA_APPRAISAL_TEST_SESSION"] = SESSION_TAG.split("=", 1)[1]


def worker_pids(*, services: bool = False, role: str | None = None) -> list[int]:
    """PIDs of live MPC workers (or, with ``services``, uvicorn services) started by this test
    session, found by the tag in their environment. A worker names itself after its role
    (``da-model-owner``, ``da-data-owner``, ``da-dealer``: ``common.runtime.worker.PROCESS_NAMES``)."""
    names = {PROCESS_NAMES[role]} if role is not None else set(PROCESS_NAMES.values())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        ours = SESSION_TAG.encode() in environ
        is_service = b"common.cli\x00" in cmdline and b"\x00serve\x00" in cmdline
        is_worker = comm in names
        if not (is_service if services else is_worker) or "State:\tZ" in status:
            continue
        if ours and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def no_leftover_workers() -> object:
    """Every test must leave no MPC worker process behind."""
    yield
    assert worker_pids() == [], "a test left MPC worker processes running"


@pytest.fixture(scope="session", autouse=True)
def no_leftover_services() -> object:
    """Service stacks live across the tests of a module; none may outlive the test session."""
    yield
    assert worker_pids(services=True) == [], "a test left service processes running"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """When an MPC run fails inside a test, show every party's traceback in the report."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and isinstance(call.excinfo.value, MPCRunError):
        report.sections.append(("MPC parties", call.excinfo.value.report))
