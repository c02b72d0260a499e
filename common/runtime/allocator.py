"""The workers' allocator and OpenMP settings (:data:`common.runtime.config.WORKER_ENV`), set on
import.

The fork server imports this module before :mod:`common.runtime.preload` imports torch, whose CPU
allocator and OpenMP runtime read their environment once; a spawned worker gets the same
variables in its environment (:func:`common.runtime.supervisor.start_party`). A variable already
set is kept.
"""

from __future__ import annotations

import os

from common.runtime.config import WORKER_ENV

for _name, _value in WORKER_ENV.items():
    os.environ.setdefault(_name, _value)
