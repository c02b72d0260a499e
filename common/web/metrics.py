"""``GET /v1/metrics``: the service's counters in the Prometheus text format (version 0.0.4).

Every value is read from the session store at scrape time, so it survives restarts and two
replicas of one state directory agree. Scrape it with the operator token (Prometheus's
``authorization: {credentials_file: ...}``)."""

from __future__ import annotations

from common.web.store import SessionStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(store: SessionStore, *, service: str, version: str, live: int) -> str:
    """The metrics of one service; ``live``: the sessions whose workers run in this process."""
    totals = store.totals()
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value:.17g}")

    metric(
        "data_appraisal_info",
        "gauge",
        "The service and its version.",
        [(f'{{service="{_label(service)}",version="{_label(version)}"}}', 1)],
    )
    metric(
        "data_appraisal_sessions",
        "gauge",
        "Sessions this service keeps, by state.",
        [(f'{{state="{s.value}"}}', n) for s, n in totals.sessions.items()],
    )
    metric(
        "data_appraisal_running_workers",
        "gauge",
        "Sessions whose MPC worker this process supervises now.",
        [("", live)],
    )
    metric(
        "data_appraisal_results_total",
        "counter",
        "Candidate results revealed (each one a value charged to a leakage budget).",
        [("", totals.results)],
    )
    metric(
        "data_appraisal_mpc_seconds_total",
        "counter",
        "Seconds of MPC computation behind those results.",
        [("", totals.mpc_seconds)],
    )
    metric(
        "data_appraisal_mpc_bytes_total",
        "counter",
        "Bytes this party's workers sent and received for those results.",
        [
            ('{direction="sent"}', totals.bytes_sent),
            ('{direction="received"}', totals.bytes_received),
        ],
    )
    return "\n".join(lines) + "\n"
