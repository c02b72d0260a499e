"""What the services add on top of the engine: one appraisal through REST sessions, in one run.

For the same candidates and method it times

- plaintext: the plaintext twin of every score (θ̂ and v given), in this process;
- local: ``run_local`` (three worker processes, no services), wall time;
- session: ``POST /v1/sessions`` on a running model-owner service until the session is completed
  (negotiation, dealer request, worker start-up, rendezvous, MPC, result storage), wall time;
  the services were started before the clock starts, as in a deployment;
- concurrent: N sessions opened at once, wall time until the last one completes;

and prints each against the plaintext time, plus the negotiation latency (the POST alone).

Usage: ``.venv/bin/python benchmarks/bench_services.py [--method influence] [--candidates 10]
[--concurrent 4] [--json F]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx

from common.cli.stack import local_stack
from common.ml.examples import write_example_data
from common.runtime.local import plaintext_scores, run_local

TERMINAL = {"completed", "failed", "rejected", "cancelled", "expired"}


def run_session(client: httpx.Client, body: dict[str, object]) -> tuple[float, float, str]:
    """(seconds to the POST's answer, seconds to completion, final state)."""
    start = time.perf_counter()
    view = client.post("/v1/sessions", json=body).json()
    posted = time.perf_counter() - start
    while view["state"] not in TERMINAL:
        time.sleep(0.05)
        view = client.get(f"/v1/sessions/{view['id']}").json()
    return posted, time.perf_counter() - start, view["state"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="influence")
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        split = write_example_data(Path(tmp) / "data", seed=0)
        files = list(split.candidates[: args.candidates])
        ids = [f.stem for f in files]
        start = time.perf_counter()
        plaintext_scores(method=args.method, train=split.train, test=split.test, candidates=files)
        plain = time.perf_counter() - start  # includes training θ̂ and v, as each run does

        start = time.perf_counter()
        run_local(method=args.method, train=split.train, test=split.test, candidates=files)
        local = time.perf_counter() - start

        with (
            local_stack(
                Path(tmp) / "services",
                train=split.train,
                test=split.test,
                data_dir=split.directory / "data_owner",
            ) as stack,
            stack.model_owner.client(timeout=120) as client,
        ):
            body = {"data_owner_url": stack.data_owner.url, "datasets": ids, "method": args.method}
            posted, session, state = run_session(client, body)
            assert state == "completed", state
            start = time.perf_counter()
            views = [
                client.post("/v1/sessions", json={**body, "datasets": ids[:1]}).json()
                for _ in range(args.concurrent)
            ]
            for view in views:
                while view["state"] not in TERMINAL:
                    time.sleep(0.05)
                    view = client.get(f"/v1/sessions/{view['id']}").json()
                assert view["state"] == "completed", view
            concurrent = time.perf_counter() - start

    rows = {
        "plaintext_s": plain,
        "local_s": local,
        "session_s": session,
        "negotiation_s": posted,
        f"concurrent_{args.concurrent}x1_s": concurrent,
    }
    print(f"{args.method}, digits split, {len(files)} candidates (concurrent: 1 candidate each)")
    print(f"{'':24}{'seconds':>10}{'× plaintext':>14}")
    for name, seconds in rows.items():
        print(f"{name:24}{seconds:10.2f}{seconds / plain:14.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
