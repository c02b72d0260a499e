"""Reproductions of the paper's experiments through the real two-party MPC path."""

from pathlib import Path

DATA_ROOT = Path.home() / ".cache" / "data-appraisal"  # where torchvision keeps MNIST / CIFAR-10
