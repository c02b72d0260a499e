"""The ``data-appraisal`` command line: the top of the kernel, above the parties' services."""

from common.cli.main import app, main

__all__ = ["app", "main"]
