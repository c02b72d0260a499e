"""A worker's configuration: the one file a supervisor hands an MPC party process.

It is written 0600 into the session's private work directory and named in the worker's
environment (never a secret on a command line); a worker that holds session keys deletes it once
read. Strict: an unknown field is an error, so that a typo (``threshhold``, ``label_colum``) fails
instead of silently falling back to a default.
"""

from __future__ import annotations

import os
import secrets

from pydantic import Field, model_validator

from common.mpc.shards import Shard, shard_problem
from common.protocol import JobSpec, Rendezvous, Role, SessionKeys, Strict, threshold_problem

CONFIG_ENV = "DATA_APPRAISAL_WORKER_CONFIG"
# The workers' environment for torch's CPU allocator and its OpenMP runtime, set before torch is
# imported (both read it once; docs/performance.md, "Using the cores"):
# - allocations from 2 MB up on transparent huge pages: a worker's large tensors (masks,
#   encodings, shares of n·d elements) are fresh allocations each time, and faulting their memory
#   in 4 KB pages cost about as much as computing them;
# - idle OpenMP threads sleep instead of spinning: three parties share the cores, and with two
#   threads each a spinning thread took the CPU its peer was waiting for (influence 4–8 s
#   instead of 0.6–1.0 s at two threads).
WORKER_ENV = {"THP_MEM_ALLOC_ENABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


class PartyConfig(Strict):
    role: Role
    rendezvous: Rendezvous
    listen_host: str | None = Field(
        default=None,
        description="model owner only: the local address its worker binds for the rendezvous, when "
        "the advertised one (in rendezvous) is not an address of this host (NAT); default: that one",
    )
    job: JobSpec
    session_id: str = Field(default_factory=lambda: "local-" + secrets.token_hex(8))
    keys: SessionKeys | None = None  # the keys of this role's links; the transport needs them
    allow_insecure_tfp: bool = False  # JobSpec.provider == "TFP" is refused unless this is set
    timeout_seconds: float = Field(
        default=120.0, gt=0, description="each network wait, rendezvous included"
    )
    threads: int = Field(
        default=1, ge=1, le=256, description="torch and BLAS threads of the worker"
    )
    shard: int = Field(default=0, ge=0, description="this worker's shard (common.mpc.shards)")
    shards: int = Field(default=1, ge=1, le=64, description="the session's worker triples")
    shard_dir: str | None = Field(
        default=None,
        description="an owner's private directory where its shards s > 0 hand their shares to "
        "its shard 0 (shards > 1 only)",
    )
    result_file: str
    error_file: str
    progress_file: str
    # model owner only
    train: str | None = None
    test: str | None = None
    state: str | None = None  # npz with theta, v, test_loss (precomputed θ̂ and H⁻¹ḡ); else trained
    threshold: float | None = None  # τ, the model owner's secret (threshold reveal only)
    # data owner only
    candidates: list[str] = Field(default_factory=list)
    label_column: str | None = None

    @property
    def part(self) -> Shard:
        """This worker's shard of the session."""
        return Shard(self.shard, self.shards)

    @model_validator(mode="after")
    def _consistent(self) -> PartyConfig:
        """Each role gets exactly its own inputs, and every path is absolute (the worker runs in
        a directory of its own: a relative path would name another file)."""
        mo_only = {"train": self.train, "test": self.test, "state": self.state}
        if self.listen_host is not None and self.role != "model_owner":
            raise ValueError("listen_host: only the model owner's worker listens")
        if self.role == "model_owner":
            if self.train is None or self.test is None:
                raise ValueError("the model owner's worker needs its train and test files")
            problem = threshold_problem(self.job, self.threshold)
            if problem is not None:
                raise ValueError(problem)
        else:
            given = [name for name, value in mo_only.items() if value is not None]
            if self.threshold is not None:
                given.append("threshold")
            if given:
                raise ValueError(
                    f"{', '.join(given)}: the model owner's inputs, not the {self.role}'s"
                )
        if self.role == "data_owner":
            if len(self.candidates) != len(self.job.candidates):
                raise ValueError(
                    f"candidates: the data owner has {len(self.candidates)} candidate files, the "
                    f"job lists {len(self.job.candidates)}"
                )
        elif self.candidates:
            raise ValueError(f"candidates: the data owner's inputs, not the {self.role}'s")
        if self.role == "dealer" and self.job.provider != "TTP":
            raise ValueError("provider: a dealer serves TTP jobs only")
        problem = shard_problem(self.job.method, self.shards)
        if problem is not None:
            raise ValueError(problem)
        if self.shard >= self.shards:
            raise ValueError(f"shard: {self.shard} is not one of the {self.shards} shards")
        if (self.shard_dir is None) != (self.shards == 1 or self.role == "dealer"):
            raise ValueError(
                "shard_dir: an owner's worker of several shards needs one, nobody else has one"
            )
        files = [self.result_file, self.error_file, self.progress_file, *self.candidates]
        files += [] if self.shard_dir is None else [self.shard_dir]
        files += [f for f in mo_only.values() if f is not None]
        relative = [f for f in files if not os.path.isabs(f)]
        if relative:
            raise ValueError(
                f"worker paths must be absolute (resolve them where the user gave them): {relative}"
            )
        return self
