"""The warm pool's rule: a pooled sandbox is handed out only while the configuration it was
made under is the one in force."""

from __future__ import annotations

import json
from collections.abc import Mapping


def changed_settings(recorded: str, now: Mapping[str, str]) -> str:
    """What differs between the configuration a sandbox recorded (JSON) and the one in force;
    "" when nothing does."""
    try:
        then = json.loads(recorded) if recorded else None
    except ValueError:
        then = None
    if not isinstance(then, dict):
        return "it carries no record of the configuration it was made under"
    return "; ".join(
        f"{key}: {str(then.get(key))[:80]!r} -> {str(value)[:80]!r}"
        for key, value in now.items() if then.get(key) != value
    )
