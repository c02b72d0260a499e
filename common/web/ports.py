"""Rendezvous ports: taken from a configured range, never two sessions on one port."""

from __future__ import annotations

import socket

from common.errors import ConfigError, Unavailable


class PortPool:
    """Rendezvous ports taken from a configured range, never two sessions on one port."""

    def __init__(self, spec: str, host: str = "0.0.0.0") -> None:
        try:
            low, high = (int(p) for p in spec.split("-"))
        except ValueError:
            raise ConfigError(
                f"a port range is 'LOW-HIGH', e.g. 29500-29599; got {spec!r}"
            ) from None
        if not 1024 <= low <= high <= 65535:
            raise ConfigError(f"the port range {spec!r} must lie within 1024-65535, low <= high")
        self.ports = range(low, high + 1)
        self.host = host
        self._taken: set[int] = set()

    def acquire(self) -> int:
        for port in self.ports:
            if port in self._taken:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((self.host, port))
                except OSError:
                    continue
            self._taken.add(port)
            return port
        raise Unavailable(
            f"every rendezvous port in {self.ports.start}-{self.ports.stop - 1} is in use; wait for "
            "a session to finish or widen the range"
        )

    def release(self, port: int) -> None:
        self._taken.discard(port)
