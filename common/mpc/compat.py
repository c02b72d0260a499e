"""Make CrypTen 0.4.1 (its last release, 2022) importable and correct on torch 2.x.

Import CrypTen only through :func:`import_crypten`, never with a bare ``import crypten``: this module
applies two small, documented patches first, and each is idempotent.

1. ``crypten/nn/onnx_converter.py`` imports the ``onnx`` package and
   ``torch.onnx._internal.registration`` (gone in torch 2.x) at import time, only to *convert*
   PyTorch models, which this project never does. Importing the real ``onnx`` costs seconds in
   every worker process (it loads ``ml_dtypes``), so it is not a dependency at all: we register
   stand-in modules for both, and any use of the converter fails loudly with an ImportError that
   says why.

2. ``crypten.encoder.FixedPointEncoder.decode`` floor-divides negative integers by ``scale - 1``
   instead of ``scale``, so some negative values decode exactly 1.0 too low (``-100.9999`` gives
   ``-102.0``). We replace it with an exact decoding: floor division by ``scale`` plus the remainder.

CrypTen's own transport (torch.distributed over gloo) is not used: the workers run CrypTen's
protocols over :mod:`common.mpc.transport`.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch

_PATCHED = False


class _Unavailable(types.ModuleType):
    """A stand-in module whose every attribute access explains that it is not installed."""

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        raise ImportError(
            f"{self.__name__}.{attribute}: CrypTen's ONNX model converter is not available in "
            "data-appraisal (the onnx package is deliberately not installed)"
        )


def _install_onnx_stubs() -> None:
    """Stand-ins for ``onnx`` (and ``onnx.numpy_helper``) and torch's removed ONNX registry."""
    if "onnx" not in sys.modules:
        onnx = _Unavailable("onnx", "Stand-in installed by common.compat: onnx is not used.")
        helper = _Unavailable("onnx.numpy_helper")
        onnx.numpy_helper = helper  # type: ignore[attr-defined]
        sys.modules["onnx"], sys.modules["onnx.numpy_helper"] = onnx, helper
    name = "torch.onnx._internal.registration"
    if name in sys.modules:
        return
    try:
        __import__(name)
    except ImportError:
        stub = types.ModuleType(name)
        stub.__doc__ = "Empty stand-in installed by common.compat for CrypTen 0.4.1 on torch 2.x."
        stub.registry = types.SimpleNamespace()  # type: ignore[attr-defined]
        sys.modules[name] = stub


def exact_decode(tensor: torch.Tensor, scale: int) -> torch.Tensor:
    """Decode fixed-point integers exactly: ``floor(t / scale) + (t mod scale) / scale``.

    Returns float64 so that large values keep all their fractional bits (float32 keeps 24).
    """
    quotient = torch.div(tensor, scale, rounding_mode="floor")
    remainder = tensor - quotient * scale
    return quotient.double() + remainder.double() / scale


def _patch_encoder(crypten_module: Any) -> None:
    encoder_cls = crypten_module.encoder.FixedPointEncoder
    if getattr(encoder_cls.decode, "_data_appraisal_patched", False):
        return

    def decode(self: Any, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        if self._scale == 1:
            return tensor.data
        # CrypTen's callers expect float32, like the original decode.
        return exact_decode(tensor, self._scale).float()

    decode._data_appraisal_patched = True  # type: ignore[attr-defined]
    encoder_cls.decode = decode


def import_crypten() -> Any:
    """Apply the patches above and return the ``crypten`` module."""
    global _PATCHED
    _install_onnx_stubs()
    import crypten

    if not _PATCHED:
        _patch_encoder(crypten)
        _PATCHED = True
    return crypten
