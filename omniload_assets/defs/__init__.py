"""``dg``'s components folder (``[tool.dg.project] defs_module``).

``dg scaffold defs omniload_assets.KlaviyoComponent <name>`` writes ``<name>/defs.yaml`` here; the
code location (:mod:`omniload_assets.definitions`) loads every component found here next to its
default Klaviyo assets, so give a scaffolded one another ``key_prefix`` than ``klaviyo``.
"""
