"""The data owner's policy: why an invitation must be refused, one check at a time.

The job itself was validated when the invitation was parsed (:class:`common.protocol.JobSpec`:
ranges, a known method, noise only where it is calibrated, a power-of-two feature bound, ...).
The checks here are this data owner's own: whom it serves, what it allows, its leakage budgets,
and whether the job matches its data. Each check returns the reason for a refusal, or None; a new
check on the policy is one function appended to :data:`CHECKS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.protocol import SessionKeys
from common.web.schemas import Invitation
from common.web.store import SessionStore
from common.web.tls import is_loopback
from data_owner.registry import Registry
from data_owner.settings import DataOwnerSettings


@dataclass(frozen=True)
class Review:
    """What the checks look at: the invitation, who sent it, and this data owner's state."""

    invitation: Invitation
    who: str  # the model owner whose token came with it
    settings: DataOwnerSettings
    registry: Registry
    store: SessionStore


Check = Callable[[Review], "str | None"]


def _sender(r: Review) -> str | None:
    if r.invitation.model_owner != r.who:
        return f"the invitation names model owner {r.invitation.model_owner!r}, but its token is {r.who!r}'s"
    return None


_LOOPBACK_HINT = (
    "; it is a loopback address, which only reaches the model owner when both run on one host: "
    "the model owner must set MODEL_OWNER_ADVERTISE_HOST to an address this host can reach"
)


def _endpoints(r: Review) -> str | None:
    """The data owner connects and calls only where it is configured to, whatever the invitation
    says: its worker to a rendezvous host of this model owner's, and a dealer of its own list."""
    peer = r.settings.model_owners[r.who]
    host = urlsplit(r.invitation.rendezvous).hostname or ""
    if host not in peer.rendezvous_hosts:
        configured = ", ".join(peer.rendezvous_hosts) or "none"
        return (
            f"the rendezvous host {host!r} is not one of model owner {r.who!r}'s "
            f"(DATA_OWNER_MODEL_OWNERS[{r.who!r}].rendezvous_hosts: {configured}): this data "
            "owner's worker connects only to hosts configured for that model owner"
            + (_LOOPBACK_HINT if is_loopback(host) else "")
        )
    if r.invitation.job.provider == "TTP" and r.settings.dealer(r.invitation.dealer_url) is None:
        known = ", ".join(f"{n} ({d.url})" for n, d in r.settings.dealers.items()) or "none"
        return (
            f"the data owner does not trust the dealer at {r.invitation.dealer_url} "
            f"(DATA_OWNER_DEALERS: {known})"
        )
    return None


def _method(r: Review) -> str | None:
    method = r.invitation.job.method
    if method not in r.settings.allowed_methods:
        return (
            f"the data owner's policy does not allow the method {method!r} "
            f"(allowed: {', '.join(r.settings.allowed_methods)})"
        )
    return None


def _provider(r: Review) -> str | None:
    job, settings = r.invitation.job, r.settings
    if job.provider == "TFP" and not settings.allow_insecure_tfp:
        return (
            "the data owner refuses provider TFP: with TFP the model owner's worker generates every "
            "Beaver triple and can therefore read this data owner's data; use a dealer (provider "
            "TTP), or set DATA_OWNER_ALLOW_INSECURE_TFP=true for testing only"
        )
    return None


def _reveal(r: Review) -> str | None:
    job, settings = r.invitation.job, r.settings
    if settings.require_reveal_to_both and job.reveal_to != "both":
        return (
            "the data owner's policy requires to see every revealed result (reveal_to 'both'), so "
            f"that it can audit what is revealed about its data; the job has {job.reveal_to!r}"
        )
    epsilon = job.noise_epsilon
    if epsilon is not None and epsilon < settings.min_noise_epsilon:
        return (
            f"the data owner's policy refuses noise with ε = {epsilon:g}, below its minimum "
            f"{settings.min_noise_epsilon:g} (DATA_OWNER_MIN_NOISE_EPSILON)"
        )
    if settings.max_noise_epsilon is not None:
        required = (
            f"the data owner's policy requires calibrated noise with ε ≤ "
            f"{settings.max_noise_epsilon:g} on every released result (DATA_OWNER_MAX_NOISE_EPSILON; "
            "noise is available for method 'influence' only)"
        )
        if job.noise_epsilon is None:
            return f"{required}; the job has no noise"
        if job.noise_epsilon > settings.max_noise_epsilon:
            return f"{required}; the job has ε = {job.noise_epsilon:g}"
    return None


def _memory(r: Review) -> str | None:
    rows, limit = r.invitation.job.chunk_rows, r.settings.max_chunk_rows
    if rows > limit:
        return (
            f"the job's MPC chunks of {rows} rows are larger than this data owner allows "
            f"({limit}, DATA_OWNER_MAX_CHUNK_ROWS): its worker holds one chunk of a candidate in "
            "memory at a time; ask for chunk_rows ≤ that"
        )
    return None


def _keys(r: Review) -> str | None:
    keys = r.invitation.keys or SessionKeys()
    if keys.do_dealer is not None:
        return (
            "the invitation carries a key for the data owner ↔ dealer link: that key is the data "
            "owner's to make (it sends it to the dealer itself), never the model owner's"
        )
    needed = keys.missing("data_owner", r.invitation.job.provider)
    missing = [link for link in needed if link != "do-dealer"]
    if missing:
        return (
            f"the invitation carries no pre-shared key for the MPC link(s) {', '.join(missing)}; "
            "the secure transport needs them"
        )
    return None


def _budget(r: Review) -> str | None:
    who, settings, store = r.who, r.settings, r.store
    today = store.count_since(who, time.time() - 86400)
    if today >= settings.max_sessions_per_day:
        return (
            f"model owner {who!r} has used its {settings.max_sessions_per_day} sessions for the "
            "last 24 hours"
        )
    budget_sessions, budget_candidates = settings.budget(who)
    used_sessions, used_candidates = store.usage(who)
    if used_sessions + 1 > budget_sessions:
        return (
            f"model owner {who!r} has used its session budget at this data owner: "
            f"{used_sessions} of {budget_sessions} sessions (a lifetime limit on how much the "
            "revealed scores may tell about the data; GET /v1/budget shows it)"
        )
    n = len(r.invitation.job.candidates)
    if used_candidates + n > budget_candidates:
        return (
            f"the {n} candidates of this session would exceed model owner {who!r}'s "
            f"candidate budget at this data owner: {used_candidates} of {budget_candidates} "
            "candidates used (a lifetime limit on how much the revealed scores may tell about the "
            "data; GET /v1/budget shows it)"
        )
    return None


def _data(r: Review) -> str | None:
    inv, settings = r.invitation, r.settings
    if inv.label_encoding != settings.label_encoding:
        return (
            f"label encodings differ: the model owner uses {inv.label_encoding!r}, this data owner "
            f"{settings.label_encoding!r}"
        )
    job = inv.job
    for cand in job.candidates:
        if cand.name not in r.registry.meta:
            return f"unknown dataset {cand.name!r}; GET /v1/datasets lists this data owner's"
        meta = r.registry.meta[cand.name]
        mismatch = meta.mismatch(n_features=job.n_features, n_classes=job.n_classes)
        if mismatch is not None:
            return mismatch
        if meta.n_samples != cand.n_samples:
            return (
                f"dataset {cand.name!r} has {meta.n_samples} samples, the job says {cand.n_samples}"
            )
        if meta.feature_bound > job.feature_bound:
            return (
                f"dataset {cand.name!r} has features up to {meta.feature_bound:g}, above the job's "
                f"feature bound {job.feature_bound:g}"
            )
    return None


# In order: who asks, where it would connect, what is asked, the keys, the cost, whether it fits the data.
CHECKS: tuple[Check, ...] = (
    _sender,
    _endpoints,
    _method,
    _provider,
    _reveal,
    _memory,
    _keys,
    _budget,
    _data,
)


def refusal(review: Review) -> str | None:
    """The first reason to refuse the invitation, or None to accept it."""
    for check in CHECKS:
        reason = check(review)
        if reason is not None:
            return reason
    return None
