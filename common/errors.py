"""Every error data-appraisal raises on purpose, in one tree, each with the HTTP status it maps to.

Every message names what is wrong and how to fix it. The command line prints it as one line; the
services render it as ``{"error": "<ClassName>", "detail": "<message>"}`` with ``status_code``
(:mod:`common.web.responses` is the one place that does).

    AppraisalError            500  the base; never raised itself
     ├── DataError            422  a data file is missing, malformed or does not match the metadata
     ├── ConfigError          422  an option, setting or parameter is out of range or inconsistent
     │    └── PlainHTTPRefused 422 a bearer token would have crossed the network in clear
     ├── Unauthorized         401  no bearer token, or one this service does not know
     ├── Forbidden            403  a known caller, but not allowed to do this
     ├── NotFound             404  no such session, data set or model owner (for this caller)
     ├── Conflict             409  the session or data set is in a state that forbids this
     ├── PayloadTooLarge      413  a request body over its limit
     ├── Unavailable          503  the service is at capacity: retry later
     ├── PeerUnavailable      504  another service did not answer (refused, timed out, TLS failed)
     ├── SessionEnded         409  a session ended without results (rejected, failed, ...): client side
     └── MPCError             502  the secure computation failed
          ├── MPCRunError     502  a party raised; ``report`` holds every party's traceback
          ├── PeerTimeout     504  a party did not show up, or did not finish, before its deadline
          ├── PeerAuthError   403  a peer failed authentication or was given other session parameters
          └── ChannelClosed   502  an MPC link closed, or its records stopped making sense
"""

from __future__ import annotations

from typing import Any


class AppraisalError(Exception):
    """Base class of every error this project raises on purpose."""

    status_code = 500


class DataError(AppraisalError):
    status_code = 422


class ConfigError(AppraisalError):
    """``field``, when known, names the parameter at fault (a command line maps it to its option)."""

    status_code = 422

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PlainHTTPRefused(ConfigError):
    """Raised before a request leaves: its token would cross the network unencrypted."""


class Unauthorized(AppraisalError):
    status_code = 401


class Forbidden(AppraisalError):
    status_code = 403


class NotFound(AppraisalError):
    status_code = 404


class Conflict(AppraisalError):
    status_code = 409


class PayloadTooLarge(AppraisalError):
    status_code = 413


class Unavailable(AppraisalError):
    status_code = 503


class PeerUnavailable(AppraisalError):
    status_code = 504


class SessionEnded(AppraisalError):
    """A session ended without results; ``view`` is its last state (a session view)."""

    status_code = 409

    def __init__(self, message: str, view: Any = None) -> None:
        super().__init__(message)
        self.view = view


class MPCError(AppraisalError):
    status_code = 502


class MPCRunError(MPCError):
    def __init__(self, message: str, report: str) -> None:
        super().__init__(message)
        self.report = report


class PeerTimeout(MPCError):
    status_code = 504


class PeerAuthError(MPCError):
    status_code = 403


class ChannelClosed(MPCError):
    """The peer closed the connection or its records stopped making sense."""


class TruncationFailure(MPCError):
    """A two-party truncation failed in the first attempt at a candidate and again in its one
    recomputation (common.mpc.truncation): no result is given rather than a wrong one."""
