"""The code location's table of contents: :func:`omniload_assets.klaviyo_definitions` with its
defaults (every option from the environment, ``OMNILOAD_TABLES`` choosing the tables), this
deployment's executor, and any component scaffolded into ``omniload_assets/defs`` (``dg scaffold defs``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import dagster as dg

from omniload_assets import settings
from omniload_assets.factory import build_resources, klaviyo_definitions

__all__ = ["build_definitions", "build_executor", "build_resources", "defs"]

#: The package of ``dg``'s components (``[tool.dg.project] defs_module``).
DEFS_MODULE = "omniload_assets.defs"


def build_executor() -> dg.ExecutorDefinition:
    """Dagster's default executor, but in process unless ``OMNILOAD_EXECUTOR=multiprocess``.

    A step process re-imports the code location (1.5-2 s of CPU each, two per table with its checks):
    for one table that was more than half of a `dagster asset materialize` (7.7 -> 3.4 s), and on
    2 cores 30 of them made up most of a 15-table run. In process, the tables of a run go one after
    another, each with its own worker threads (README, Performance). Run config still picks either
    (``execution: {config: {multiprocess: {...}}}``), as with Dagster's default.
    """
    default = {settings.executor_name(): {}}
    return dg.multi_or_in_process_executor.configured(
        lambda config: config or default,
        name="multi_or_in_process_executor",
        config_schema=dg.Field(
            dg.Permissive(),
            default_value={},
            description="multiprocess: {...} or in_process: {...}, as Dagster's default executor takes; "
            f"empty: {settings.executor_name()} (OMNILOAD_EXECUTOR)",
        ),
    )


def build_definitions() -> dg.Definitions:
    """The default Klaviyo assets and everything around them, read from the environment at call time.

    Every ``OMNILOAD_*`` variable is checked first (``settings.validate_all``): a bad one fails the
    load, ``dagster definitions validate`` included, with one line naming it.
    """
    return dg.Definitions.merge(klaviyo_definitions(), dg.Definitions(executor=build_executor()))


def scaffolded_definitions() -> dg.Definitions | None:
    """The components scaffolded into ``omniload_assets/defs`` (none: None, and nothing imported)."""
    folder = Path(__file__).parent / "defs"
    if not folder.is_dir() or not any(p.is_dir() and p.name[0] not in "_." for p in folder.iterdir()):
        return None
    package = sys.modules[__package__ or "omniload_assets"]
    defs_root = importlib.import_module(DEFS_MODULE)
    # Importing the folder made ``omniload_assets.defs`` that module; drop it, so the name is the
    # code location's Definitions again (``dagster ... -m omniload_assets``: its lazy ``__getattr__``).
    vars(package).pop("defs", None)
    return dg.load_defs(defs_root, project_root=folder.parents[1])


def build_location() -> dg.Definitions:
    """What ``dagster dev``, ``dg list defs`` and ``workspace.yaml`` load: the default Klaviyo
    assets and any scaffolded component."""
    scaffolded = scaffolded_definitions()
    default = build_definitions()
    return default if scaffolded is None else dg.Definitions.merge(default, scaffolded)


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, built when Dagster loads it (not at import: loading the scaffolded
    components lists this package's members, ``defs`` among them)."""
    return build_location()
