"""Reproductions of the paper's experiments through the real two-party MPC path.

An optional extra (``pip install 'data-appraisal[experiments]'``: matplotlib, for the plots);
nothing else in the project imports this package's modules.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import ModuleType

DATA_ROOT = Path.home() / ".cache" / "data-appraisal"  # where torchvision keeps MNIST / CIFAR-10


def _label_noise() -> ModuleType:
    from common.experiments import label_noise

    return label_noise


def _class_ratio() -> ModuleType:
    from common.experiments import class_ratio

    return class_ratio


def _runtime() -> ModuleType:
    from common.experiments import runtime

    return runtime


def _finetune_sweep() -> ModuleType:
    from common.experiments import finetune_sweep

    return finetune_sweep


# each experiment's module, imported when it runs (numpy, scipy, matplotlib, the MPC supervisor)
EXPERIMENTS: dict[str, Callable[[], ModuleType]] = {
    "label_noise": _label_noise,
    "class_ratio": _class_ratio,
    "runtime": _runtime,
    "finetune_sweep": _finetune_sweep,
}
