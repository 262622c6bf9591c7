"""Klaviyo to DuckDB as Dagster software-defined assets.

``defs`` (for ``dagster ... -m omniload_assets``) is built on first access, not at import: the
``omniload`` CLI imports this package, and must answer ``--help`` or a bad flag without loading
Dagster, and set its environment before the definitions read it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from omniload_assets.definitions import defs

        return defs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # Dagster's module autodiscovery lists members with dir(): keep ``defs`` visible to it.
    return sorted([*globals(), "defs"])
