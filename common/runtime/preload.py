"""What the workers' fork server imports once, so that each forked worker starts in milliseconds.

Importing torch, CrypTen (through the compatibility shim) and the MPC kernel costs about 2 s of CPU
per process; :mod:`common.runtime.supervisor` forks every worker from a server that has done it
already. Nothing here runs a computation, opens a socket or reads a secret.
"""

from __future__ import annotations

import torch

from common.ml import data, model  # noqa: F401
from common.mpc import appraisal, communicator, dealer, streams, transport  # noqa: F401
from common.mpc.compat import import_crypten
from common.runtime import worker  # noqa: F401

import_crypten()
# torch imports torch._refs and sympy lazily on the first call of broadcast_shapes (≈0.5 s)
torch.broadcast_shapes((1, 2), (3, 1))
