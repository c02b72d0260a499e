"""Make CrypTen 0.4.1 (its last release, 2022) importable and correct on torch 2.x.

Import CrypTen only through :func:`import_crypten`, never with a bare ``import crypten``: this module
applies small, documented patches first, and each is idempotent.

1. ``crypten/nn/onnx_converter.py`` imports the ``onnx`` package and
   ``torch.onnx._internal.registration`` (gone in torch 2.x) at import time, only to *convert*
   PyTorch models, which this project never does. Importing the real ``onnx`` costs seconds in
   every worker process (it loads ``ml_dtypes``), so it is not a dependency at all: we register
   stand-in modules for both, and any use of the converter fails loudly with an ImportError that
   says why.

2. ``crypten.encoder.FixedPointEncoder.decode`` floor-divides negative integers by ``scale - 1``
   instead of ``scale``, so some negative values decode exactly 1.0 too low (``-100.9999`` gives
   ``-102.0``). We replace it with an exact decoding: floor division by ``scale`` plus the remainder.

3. ``crypten.cfg`` answers every read (``cfg.debug.validation_mode``, read on *every* attribute
   access of every CrypTensor; ``cfg.encoder.precision_bits`` in every encoder) by raising and
   catching an AttributeError and then walking OmegaConf nodes: about a tenth of a worker's time
   in the softmax's many small operations. We make reads of the singleton ``cfg`` answer from
   plain dictionaries (:class:`_Section`), rebuilt whenever its config is replaced (as
   ``temp_override`` and ``load_config`` do) and written through on assignment, so that what
   is read is always what OmegaConf holds.

4. ``MPCTensor.from_shares``, ``clone`` and ``shallow_copy`` start from ``MPCTensor([])``, whose
   constructor means to skip the empty tensor (``if tensor is []``, never true) and instead
   encodes it and draws a zero-sharing of it (two empty draws and a subtraction): about 0.14 ms
   each, some 1,700 times per fine-tuning run per party. They now start from an empty shell and
   set its tensor, as CrypTen does right after; no draw is skipped that would move a generator.

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


class _Section:
    """A read-mostly view of one OmegaConf node: reads from a plain dict, writes through."""

    __slots__ = ("_node", "_values")

    def __init__(self, node: Any):
        from omegaconf import DictConfig

        values: dict[str, Any] = {}
        for key in node:
            child = node[key]
            values[key] = _Section(child) if isinstance(child, DictConfig) else child
        object.__setattr__(self, "_node", node)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            return getattr(self._node, name)  # OmegaConf's own error for a missing key

    def __setattr__(self, name: str, value: Any) -> None:
        from omegaconf import DictConfig

        setattr(self._node, name, value)
        child = self._node[name]
        self._values[name] = _Section(child) if isinstance(child, DictConfig) else child

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)


def _patch_config(crypten_module: Any) -> None:
    base: Any = type(crypten_module.cfg)
    if getattr(base, "_data_appraisal_patched", False):
        return

    class FastConfig(base):
        _data_appraisal_patched = True

        def __getattribute__(self, name: str) -> Any:
            sections = object.__getattribute__(self, "__dict__").get("_sections")
            if sections is not None and name in sections:
                return sections[name]
            if "." in name:  # cfg["a.b"]
                result = self
                for key in name.split("."):
                    result = getattr(result, key)
                return result
            return super().__getattribute__(name)

        def __setattr__(self, name: str, value: Any) -> None:
            super().__setattr__(name, value)
            config = object.__getattribute__(self, "config")
            sections = _Section(config)._values
            object.__setattr__(self, "_sections", sections)

    crypten_module.cfg.__class__ = FastConfig
    # the sections of the config loaded so far (later replacements rebuild them)
    crypten_module.cfg.config = crypten_module.cfg.config


def _patch_empty_tensors(crypten_module: Any) -> None:
    from crypten.cryptensor import CrypTensor
    from crypten.mpc.mpc import MPCTensor
    from crypten.mpc.ptype import ptype as Ptype

    if getattr(MPCTensor, "_data_appraisal_patched", False):
        return

    def shell() -> Any:
        result = MPCTensor.__new__(MPCTensor)
        CrypTensor.__init__(result, requires_grad=False)
        return result

    def from_shares(share: Any, precision: Any = None, ptype: Any = Ptype.arithmetic) -> Any:
        result = shell()
        result._tensor = ptype.to_tensor().from_shares(share, precision=precision)
        result.ptype = ptype
        return result

    def clone(self: Any) -> Any:
        result = shell()
        result._tensor = self._tensor.clone()
        result.ptype = self.ptype
        return result

    def shallow_copy(self: Any) -> Any:
        result = shell()
        result._tensor = self._tensor
        result.ptype = self.ptype
        return result

    MPCTensor.from_shares = staticmethod(from_shares)
    MPCTensor.clone = clone
    MPCTensor.shallow_copy = shallow_copy
    MPCTensor._data_appraisal_patched = True


def import_crypten() -> Any:
    """Apply the patches above and return the ``crypten`` module."""
    global _PATCHED
    _install_onnx_stubs()
    import crypten

    if not _PATCHED:
        _patch_encoder(crypten)
        _patch_config(crypten)
        _patch_empty_tensors(crypten)
        _PATCHED = True
    return crypten
