"""Where pip should look for torch, and whether the torch it installed is the CPU build.

    python requirements/torch_index.py URL          prints pip's arguments for the torch install:
                                                    --extra-index-url URL if URL answers within
                                                    a few seconds, else nothing (the plain
                                                    requirement; a note goes to stderr)
    python requirements/torch_index.py --check-installed
                                                    warns if the installed torch is a CUDA build

Used by the Makefile (TORCH_INDEX_URL) and the Dockerfile; only the standard library.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 5.0


def pip_args(url: str) -> str:
    if not url:
        return ""
    probe = url.rstrip("/") + "/torch/"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(probe, method="HEAD"), timeout=TIMEOUT_SECONDS
        ):
            pass
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(
            f"note: PyTorch's index {url} did not answer ({exc}); installing the plain torch "
            "requirement from pip's usual indexes and find-links instead",
            file=sys.stderr,
        )
        return ""
    return f"--extra-index-url {url}"


def check_installed() -> int:
    import torch

    if torch.version.cuda is not None:
        print(
            f"warning: torch {torch.__version__} is a CUDA build (CUDA {torch.version.cuda}), "
            "several GB that this CPU-only project never uses. Reinstall with PyTorch's CPU index "
            "reachable: rm -rf .venv && make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--check-installed"]:
        sys.exit(check_installed())
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(pip_args(sys.argv[1]))
