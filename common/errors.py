"""Errors raised by data-appraisal.

Every error carries a message that names what is wrong and how to fix it; the CLI prints it as one
line and the services render it as ``{"error": "<ClassName>", "detail": "<message>"}``.

    AppraisalError
     ├── DataError          a data file is missing, malformed or does not match the agreed metadata
     ├── ConfigError        an option or parameter is out of range or inconsistent
     └── MPCError           a party of the secure computation failed or timed out
          ├── MPCRunError   a party raised; carries every party's traceback in ``report``
          ├── PeerTimeout   a party did not finish (or did not show up) before its deadline
          └── PeerAuthError a peer failed authentication or disagrees on the session parameters
"""

from __future__ import annotations


class AppraisalError(Exception):
    """Base class of every error this project raises on purpose."""

    status_code = 500


class DataError(AppraisalError):
    status_code = 422


class ConfigError(AppraisalError):
    status_code = 422


class MPCError(AppraisalError):
    status_code = 502


class MPCRunError(MPCError):
    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


class PeerTimeout(MPCError):
    status_code = 504


class PeerAuthError(MPCError):
    """A peer could not prove it belongs to this session, or was given different parameters."""

    status_code = 403
