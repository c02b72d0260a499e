"""The workers' allocator and OpenMP settings (:data:`common.runtime.config.WORKER_ENV`), set on
import.

The fork server imports this module before :mod:`common.runtime.preload` imports torch, whose CPU
allocator and OpenMP runtime read their environment once; a spawned worker gets the same
variables in its environment (:func:`common.runtime.supervisor.start_party`). A variable already
set is kept.
"""

from __future__ import annotations

import ctypes
import os

from common.runtime.config import WORKER_ENV

for _name, _value in WORKER_ENV.items():
    os.environ.setdefault(_name, _value)

# glibc's heap, set here because its MALLOC_* variables are read once, at a process's start (before
# this module runs in the fork server). By default an allocation from 128 kB up is a fresh mmap,
# whose pages the kernel zeroes on first touch, and a freed one goes back to the system: a worker
# allocates and frees its n×k temporaries thousands of times a run, and zeroed pages cost the model
# owner about 0.25 s of a fine-tuning run. Below MMAP_THRESHOLD they now come from the heap and
# are reused; the heap's top is given back past TRIM_THRESHOLD (and by the explicit malloc_trim
# after each group of chunks, common.mpc.statistics), so the resident memory stays bounded.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's largest
TRIM_THRESHOLD = 64 << 20


def _tune_heap() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: its defaults stay
        pass


_tune_heap()
