"""The package's shape (issue 17): one-way imports, no private Dagster API, short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "omniload_assets"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text("utf-8"), str(path))
    return found


MODULES = _modules()


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (no import at run time)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            lines |= {n.lineno for n in ast.walk(node) if isinstance(n, ast.Import | ast.ImportFrom)}
    return lines


def imports_of(name: str) -> set[str]:
    """The package's modules ``name`` imports at run time (at top level or inside functions)."""
    tree = MODULES[name]
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            # ``from package import module`` imports that module (the package's __init__ runs anyway).
            targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            targets = targets or [base]
        found |= {t for t in targets if t in MODULES and t != name}
    return found


def test_no_import_cycle_between_the_packages_modules() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name) :] + [name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


@pytest.mark.parametrize(
    ("module", "never"),
    [
        # The client does HTTP only: it knows nothing of planning, decoding into rows or staging.
        ("omniload_assets.klaviyo.client", {"extraction", "decoders", "decode_processes", "rows", "staging"}),
        ("omniload_assets.klaviyo.retry", {"client", "extraction"}),
        # Extraction drives the client and a decoder; it never stages.
        ("omniload_assets.klaviyo.extraction", {"staging", "decode_processes", "assets"}),
        # Staging is a sink: Arrow in, Parquet out; of Klaviyo it knows the catalogue at most.
        ("omniload_assets.warehouse.staging", {"client", "extraction", "decoders", "pages", "rows"}),
        ("omniload_assets.warehouse.reads", {"client", "extraction", "writer", "staging"}),
    ],
)
def test_data_flows_one_way(module: str, never: set[str]) -> None:
    imported = {target.rsplit(".", 1)[-1] for target in imports_of(module)}
    assert not imported & never, f"{module} imports {sorted(imported & never)}"


def test_no_private_dagster_api() -> None:
    private = []
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dagster._"):
                private.append(f"{name}: {node.module}")
            elif isinstance(node, ast.Import):
                private += [f"{name}: {a.name}" for a in node.names if a.name.startswith("dagster._")]
    assert not private


def test_no_function_longer_than_sixty_lines() -> None:
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in MODULES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long
