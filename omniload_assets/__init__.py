"""Klaviyo to DuckDB as Dagster software-defined assets.

Everything here is imported on first access, not at import: the ``omniload`` CLI imports this
package, and must answer ``--help`` or a bad flag without loading Dagster and set its environment
before the definitions read it, and decode processes import it too.

* ``defs``: the code location (``dagster ... -m omniload_assets``), built from the environment.
* ``klaviyo_definitions(options)``, ``KlaviyoOptions``: the same from Python, with options.
* ``KlaviyoComponent``: the same as a Dagster component configured in YAML (``dg``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["KlaviyoComponent", "KlaviyoOptions", "defs", "klaviyo_definitions"]

#: Public name -> the module that defines it.
_LAZY = {
    "defs": "omniload_assets.definitions",
    "klaviyo_definitions": "omniload_assets.factory",
    "KlaviyoOptions": "omniload_assets.factory",
    "KlaviyoComponent": "omniload_assets.component",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    # Dagster's module autodiscovery (``defs``) and dg's component registry (``KlaviyoComponent``)
    # list members with dir(): keep the lazy ones visible to them.
    return sorted({*globals(), *_LAZY})
