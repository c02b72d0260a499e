"""A typed client of the model owner's REST API: for the command line, notebooks and scripts.

    from common.client import ModelOwnerClient
    with ModelOwnerClient("https://mo.example.org:8000", token, tls=ClientTLS(...)) as mo:
        results = mo.appraise(data_owner="https://do.example.org:8001", datasets=["c1", "c2"])
        frame = results_frame(results)  # pandas (or library="polars"), if installed

Every call returns the API's own models (:class:`SessionView`, :class:`CandidateResult`). Errors
are the project's error tree: the service's refusal keeps its class name and detail, a transport
failure is :class:`PeerUnavailable`, and the client refuses to send its token over plain HTTP to
another machine (:class:`PlainHTTPRefused`) unless told to.
"""

from __future__ import annotations

import importlib
import ssl
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import httpx

from common import errors
from common.errors import AppraisalError, PeerUnavailable, SessionEnded
from common.protocol import CandidateResult
from common.web.schemas import API_PREFIX, SessionState, SessionView
from common.web.tls import ClientTLS, explain_transport_error, refuse_plain_http

INSECURE_HTTP_VAR = "DATA_APPRAISAL_INSECURE_HTTP"  # lets the client send its token in clear


def _service_error(response: httpx.Response, url: str) -> AppraisalError:
    """The service's ErrorBody as the matching error of the tree (its class, its detail)."""
    try:
        body = response.json()
        kind, detail = str(body["error"]), str(body["detail"])
    except (ValueError, KeyError, TypeError):
        kind, detail = "", f"HTTP {response.status_code}: {response.text[:200]}"
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, AppraisalError)) or cls is SessionEnded:
        cls = AppraisalError
    error = cls(f"{url} answered {response.status_code} {kind or 'error'}: {detail}")
    error.status_code = response.status_code
    return error


class ModelOwnerClient:
    """The model owner's API, with its operator token."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        tls: ClientTLS | ssl.SSLContext | None = None,
        insecure_http: bool = False,
        timeout: float = 60.0,
    ) -> None:
        self.url = url.rstrip("/")
        refuse_plain_http(self.url, allowed=insecure_http, setting=INSECURE_HTTP_VAR)
        verify: ssl.SSLContext | bool = True
        if isinstance(tls, ClientTLS):
            verify = tls.context()
        elif isinstance(tls, ssl.SSLContext):
            verify = tls
        # kept to explain a failed connection (explain_transport_error)
        self._tls = verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
        )

    def __enter__(self) -> ModelOwnerClient:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, *, ok: int = 200, **kw: Any) -> Any:
        try:
            response = self._http.request(method, f"{API_PREFIX}{path}", **kw)
        except httpx.HTTPError as exc:
            detail = explain_transport_error(exc, self.url, self._tls)
            raise PeerUnavailable(
                f"the model owner at {self.url} did not answer: {detail}"
            ) from None
        if response.status_code != ok:
            raise _service_error(response, self.url)
        return response.json()

    # -- sessions -----------------------------------------------------------------------------------

    def open_session(self, body: dict[str, Any]) -> SessionView:
        """POST /v1/sessions: negotiate and start; the session as it stands after negotiation."""
        return SessionView.model_validate(self._request("POST", "/sessions", ok=201, json=body))

    def session(self, session_id: str) -> SessionView:
        return SessionView.model_validate(self._request("GET", f"/sessions/{session_id}"))

    def sessions(self, *, state: str | None = None, limit: int = 100) -> list[SessionView]:
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state
        return [
            SessionView.model_validate(v) for v in self._request("GET", "/sessions", params=params)
        ]

    def cancel(self, session_id: str, reason: str = "cancelled by the operator") -> SessionView:
        body = {"reason": reason}
        return SessionView.model_validate(
            self._request("POST", f"/sessions/{session_id}/cancel", json=body)
        )

    def follow(
        self,
        session_id: str,
        *,
        on_progress: Callable[[SessionView], None] | None = None,
        poll_seconds: float = 0.5,
        deadline_seconds: float = 7200.0,
    ) -> SessionView:
        """Poll a session until it ends; its final view."""
        end = time.monotonic() + deadline_seconds
        while True:
            view = self.session(session_id)
            if on_progress is not None:
                on_progress(view)
            if view.state.terminal:
                return view
            if time.monotonic() > end:
                raise errors.PeerTimeout(
                    f"session {session_id} did not end within {deadline_seconds:g} s"
                )
            time.sleep(poll_seconds)

    def appraise(
        self,
        *,
        data_owner: str,
        datasets: Sequence[str],
        method: str = "influence",
        reveal: str = "score",
        threshold: float | None = None,
        params: dict[str, Any] | None = None,
        direction: str | None = None,
        reveal_to: str | None = None,
        noise_epsilon: float | None = None,
        chunk_rows: int | None = None,
        softmax_chunks: int | None = None,
        openings: str | None = None,
        on_open: Callable[[SessionView], None] | None = None,
        on_progress: Callable[[SessionView], None] | None = None,
    ) -> list[CandidateResult]:
        """Open a session and follow it to its end; each candidate's result, or SessionEnded."""
        body = session_request(
            data_owner=data_owner,
            datasets=datasets,
            method=method,
            reveal=reveal,
            threshold=threshold,
            params=params,
            direction=direction,
            reveal_to=reveal_to,
            noise_epsilon=noise_epsilon,
            chunk_rows=chunk_rows,
            softmax_chunks=softmax_chunks,
            openings=openings,
        )
        view = self.open_session(body)
        if on_open is not None:
            on_open(view)
        if not view.state.terminal:
            view = self.follow(view.id, on_progress=on_progress)
        if view.state is not SessionState.COMPLETED:
            raise SessionEnded(
                f"session {view.id} {view.state.value}: {view.reason or 'no reason given'}", view
            )
        return view.results


def session_request(
    *,
    data_owner: str,
    datasets: Sequence[str],
    method: str = "influence",
    reveal: str = "score",
    threshold: float | None = None,
    params: dict[str, Any] | None = None,
    direction: str | None = None,
    reveal_to: str | None = None,
    noise_epsilon: float | None = None,
    chunk_rows: int | None = None,
    softmax_chunks: int | None = None,
    openings: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/sessions`` (:class:`SessionCreate`); ``None`` leaves a field to the
    model owner's default."""
    body: dict[str, Any] = {
        "data_owner_url": data_owner,
        "datasets": list(datasets),
        "method": method,
        "reveal": reveal,
        "params": {k: v for k, v in (params or {}).items() if v is not None},
    }
    optional = {
        "threshold": threshold,
        "direction": direction,
        "reveal_to": reveal_to,  # else the model owner's MODEL_OWNER_REVEAL_TO
        "noise_epsilon": noise_epsilon,
        "chunk_rows": chunk_rows,  # else the protocol's default
        "softmax_chunks": softmax_chunks,
        "openings": openings,  # else narrow
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


def results_frame(results: Sequence[CandidateResult], library: str = "pandas") -> Any:
    """The results as a data frame, one row per candidate and one column per
    :class:`CandidateResult` field: a ``pandas.DataFrame``, or with ``library="polars"`` a
    ``polars.DataFrame`` (``pip install 'data-appraisal[notebook]'`` installs both)."""
    if library not in ("pandas", "polars"):
        raise errors.ConfigError(f"library must be 'pandas' or 'polars', got {library!r}")
    try:
        module = importlib.import_module(library)
    except ImportError:
        raise errors.ConfigError(
            f"results_frame needs {library} (pip install {library}); or use "
            "[r.model_dump() for r in results]"
        ) from None
    rows = [r.model_dump() for r in results]
    if library == "polars":
        schema = {name: _POLARS_TYPES[name] for name in CandidateResult.model_fields}
        return module.DataFrame(rows, schema={k: getattr(module, v) for k, v in schema.items()})
    return module.DataFrame(rows, columns=list(CandidateResult.model_fields))


# a fixed column type each, so that an empty or all-null column keeps its type
_POLARS_TYPES = {
    "candidate": "String",
    "method": "String",
    "score": "Float64",
    "accept": "Boolean",
    "seconds": "Float64",
    "bytes_sent": "Int64",
    "bytes_received": "Int64",
    "rounds": "Int64",
    "peak_rss_mb": "Float64",
}
