"""Where a route's requests go: one upstream's address and limits, as compiled from the file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """Where a route's requests go."""

    name: str
    scheme: str
    host: str
    port: int
    base_path: str
    connect_timeout: float
    timeout: float
    max_connections: int
    preserve_host: bool

    @property
    def origin(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"
