"""One secret of one sandbox, as the egress proxy applies it (secrets.py checks and keeps them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SecretRule:
    """One secret of one sandbox: which, for which host, into which header, how, and its placeholder."""

    name: str
    host: str
    header: str
    format: str
    placeholder: str

    def record(self) -> dict[str, str]:
        return asdict(self)
