"""ingestr's ``ingest`` flags as omniload takes them: the write options, the flags accepted because
they change nothing here, and those refused with the reason.

The CLI (``omniload_assets.cli``) declares them with :func:`add_write_flags`, :func:`add_no_op_flags`
and :func:`add_refused_flags`, and checks them against the tables with :func:`plan_write_options`.
Nothing here imports Dagster, so ``--help`` and usage errors stay instant.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from omniload_assets import settings
from omniload_assets.klaviyo.catalog import TableSpec


class UsageError(Exception):
    """A flag's value cannot be used; the message says which and what to pass instead."""


def shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a one-line message, cut short when long."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


# -- flag values ---------------------------------------------------------------------------------

#: ``--incremental-strategy`` values omniload writes with (ingestr's meanings; see WriteOptions).
STRATEGIES = ("merge", "replace", "append", "delete+insert")
#: ingestr's values that omniload refuses, and why.
STRATEGY_REFUSALS = {
    "scd2": "scd2 (a row per version) is not supported: omniload keeps each Klaviyo record's latest "
    "version; use merge, replace, append or delete+insert",
    "truncate+insert": "truncate+insert has been removed from ingestr; use replace",
}
#: ``--progress`` values: ours, and ingestr's ``interactive`` (a live display: our bar).
PROGRESS_MODES = {"auto": "auto", "bar": "bar", "log": "log", "off": "off", "interactive": "bar"}
#: ingestr's ``--columns`` type names that are not DuckDB types (the rest are DuckDB's too).
INGESTR_ONLY_TYPES = frozenset({"wei", "complex"})
TYPE_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_ ]*(\(\d+(, ?\d+)?\))?")
PAGE_SIZE_MAX = 1_000_000  # anything above every endpoint's largest page (1,000) is capped anyway


def parse_strategy(text: str) -> str | None:
    """ingestr's ``--incremental-strategy``: one of :data:`STRATEGIES`, or ``none`` (None: the
    table's own, what ingestr does when the source handles incrementality)."""
    value = text.strip().lower()
    if value == "none":
        return None
    if value in STRATEGIES:
        return value
    if value in STRATEGY_REFUSALS:
        raise argparse.ArgumentTypeError(STRATEGY_REFUSALS[value])
    raise argparse.ArgumentTypeError(
        f"{shown(text)} is not a strategy; use merge, replace, append, delete+insert or none "
        "(the table's own)"
    )


def parse_progress(text: str) -> str:
    """``auto``, ``bar``, ``log``, ``off``, or ingestr's ``interactive`` (= ``bar``)."""
    value = text.strip().lower()
    if value in PROGRESS_MODES:
        return PROGRESS_MODES[value]
    if value == "json":
        raise argparse.ArgumentTypeError(
            "json (ingestr's machine-readable events) is not available; use log (plain lines) or off"
        )
    raise argparse.ArgumentTypeError(f"{shown(text)} is not one of auto, bar, interactive, log, off")


def parse_page_size(text: str) -> int:
    """``--page-size``: records per Klaviyo page, a whole number from 1 (capped per endpoint)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= PAGE_SIZE_MAX:
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not a whole number from 1 to {PAGE_SIZE_MAX:,} (records per page; each "
            "endpoint caps it at its largest page)"
        )
    return value


def parse_loader_format(text: str) -> str:
    """``--loader-file-format``: only ``parquet``, what omniload stages (a no-op)."""
    value = text.strip().lower()
    if value != "parquet":
        raise argparse.ArgumentTypeError(
            f"{shown(text)} cannot apply: omniload stages Parquet files and DuckDB loads them; use parquet "
            "or leave the flag out"
        )
    return value


def parse_schema_naming(text: str) -> str:
    """``--schema-naming``: ``default``, ``auto`` or ``snake_case`` (omniload's names: a no-op)."""
    value = text.strip().lower()
    if value not in ("default", "auto", "snake_case"):
        raise argparse.ArgumentTypeError(
            f"{shown(text)} cannot apply: omniload's table and column names are fixed snake_case "
            "(catalog_items); choose a table's name with --dest-table"
        )
    return value


def parse_schema_contract(text: str) -> str:
    """``--schema-contract``: only ``evolve``, what omniload's writer does (a no-op)."""
    value = text.strip().lower()
    if value != "evolve":
        raise argparse.ArgumentTypeError(
            f"{shown(text)} is not supported: omniload always evolves a table (new Klaviyo attributes "
            "become columns, a type too narrow is widened); use evolve or leave the flag out"
        )
    return value


def split_names(values: Sequence[str] | None) -> list[str]:
    """A repeatable flag's values, each also comma-separated (``a,b --flag c``), blanks dropped; a
    comma inside parentheses (``amount:decimal(10,2)``) does not separate."""
    return [
        name.strip() for value in values or () for name in re.split(r",(?![^(]*\))", value) if name.strip()
    ]


@dataclass(frozen=True)
class WriteOptions:
    """How ``ingest`` writes, from ingestr's flags: the write options of each asset's op config
    (``partitions.WindowConfig``). None: the table's own (its strategy, its ``id`` key, all columns)."""

    full_refresh: bool = False
    incremental_strategy: str | None = None
    primary_key: tuple[str, ...] | None = None
    #: ``--columns`` entries as the op config takes them: ``name`` selects, ``name:type`` types.
    columns: tuple[str, ...] | None = None

    def strategy_of(self, spec: TableSpec) -> str:
        """The write of ``spec``: with ``--full-refresh`` the table becomes this run's rows whatever
        the strategy (ingestr drops the table and loads it anew), hence replace."""
        return "replace" if self.full_refresh else self.incremental_strategy or spec.strategy

    def run_config(self, spec: TableSpec) -> dict[str, object]:
        """``spec``'s op config entries; empty when every option is the table's own."""
        config: dict[str, object] = {"full_refresh": True} if self.full_refresh else {}
        if self.strategy_of(spec) != spec.strategy:
            config["incremental_strategy"] = self.strategy_of(spec)
        if self.primary_key is not None and self.primary_key != (spec.primary_key,):
            config["primary_key"] = list(self.primary_key)
        if self.columns is not None:
            config["columns"] = list(self.columns)
        return config

    def selected(self, spec: TableSpec) -> list[str] | None:
        """The columns written (None: all): the bare names of ``columns`` and the key columns."""
        names = [entry.partition(":")[0] for entry in self.columns or ()]
        if all(":" in entry for entry in self.columns or ()):
            return None  # name:type entries type columns and select none
        chosen = {*names, *key_columns(spec, self.primary_key or ())}
        return [name for name in spec.column_types() if name in chosen]

    def describe(self) -> str:
        """``; full refresh; strategy append; ...`` for the options given (empty: none)."""
        parts = ["full refresh (the tables become this run's rows)"] if self.full_refresh else []
        if self.incremental_strategy is not None:
            parts.append(f"strategy {self.incremental_strategy}")
        if self.primary_key is not None:
            parts.append(f"primary key {', '.join(self.primary_key)}")
        if self.columns is not None:
            parts.append(f"columns {', '.join(self.columns)}")
        return "".join(f"; {part}" for part in parts)


def one_table(flag: str, specs: Sequence[TableSpec]) -> TableSpec:
    """The table a column-naming flag is about; a :class:`UsageError` when several are selected."""
    if len(specs) != 1:
        raise UsageError(f"{flag} names columns of one table; pass a single --source-table with it")
    return specs[0]


def check_columns(flag: str, spec: TableSpec, names: Sequence[str]) -> None:
    """Every one of ``names`` is a column of ``spec``; else a :class:`UsageError` listing them."""
    known = spec.column_types()
    for name in names:
        if name not in known:
            raise UsageError(
                f"{flag}: {spec.name} has no column {shown(name)}; its columns: {', '.join(known)}"
            )


def key_columns(spec: TableSpec, primary_key: Sequence[str]) -> list[str]:
    """The columns every write keeps (as ``partitions.write_options`` does): the table's id, the
    ``--primary-key`` columns and the incremental key."""
    keys = [spec.primary_key, *primary_key, spec.incremental_key]
    return [name for name in dict.fromkeys(keys) if name is not None]


def check_type(entry: str, type_name: str) -> None:
    """``type_name`` is one of ingestr's types or a DuckDB type; else a :class:`UsageError`."""
    if type_name.lower() in INGESTR_ONLY_TYPES:
        return
    if TYPE_SHAPE.fullmatch(type_name):
        import duckdb

        try:
            with duckdb.connect() as conn:
                conn.execute(f"SELECT CAST(NULL AS {type_name})")
            return
        except duckdb.Error:
            pass
    raise UsageError(
        f"--columns {shown(entry)}: {shown(type_name)} is not a type; use one of ingestr's (text, bigint, "
        "double, bool, timestamp, date, time, decimal, json, binary) or a DuckDB type"
    )


def parse_column_entries(spec: TableSpec, entries: Sequence[str]) -> list[str]:
    """ingestr's ``--columns`` (``name:type``, comma-separated; ``name`` alone selects), checked:
    each name a column of ``spec``, each type a type; renames (``name:type:source``) refused."""
    checked = []
    for entry in split_names(entries):
        name, _, rest = (part.strip() for part in entry.partition(":"))
        type_name, renamed, _ = (part.strip() for part in rest.partition(":"))
        check_columns("--columns", spec, [name])
        if renamed or (entry.count(":") and not type_name):
            raise UsageError(
                f"--columns {shown(entry)}: renaming is not supported; omniload keeps Klaviyo's attribute "
                "names (rename in a view or downstream model)"
            )
        if type_name:
            check_type(entry, type_name)
        checked.append(f"{name}:{type_name}" if type_name else name)
    return checked


def exclude_columns(
    spec: TableSpec, entries: list[str], excluded: Sequence[str], keys: Sequence[str]
) -> list[str]:
    """``--columns`` entries that write every column of ``spec`` (or those ``entries`` select) but
    ``excluded`` (``--sql-exclude-columns``); key columns cannot be excluded."""
    check_columns("--sql-exclude-columns", spec, excluded)
    kept = key_columns(spec, keys)
    if dropped := [name for name in excluded if name in kept]:
        raise UsageError(
            f"--sql-exclude-columns {dropped[0]}: {spec.name} always keeps its key columns "
            f"({', '.join(kept)})"
        )
    typed = [entry for entry in entries if ":" in entry]
    if clash := [entry for entry in typed if entry.partition(":")[0] in excluded]:
        raise UsageError(f"--columns {clash[0]} names a column --sql-exclude-columns excludes")
    bare = [entry for entry in entries if ":" not in entry] or list(spec.column_types())
    return [name for name in bare if name not in excluded] + typed


def plan_write_options(args: argparse.Namespace, specs: Sequence[TableSpec]) -> WriteOptions:
    """``--full-refresh``, ``--incremental-strategy``, ``--incremental-key``, ``--primary-key``,
    ``--columns`` and ``--sql-exclude-columns``, checked against the tables."""
    strategy = args.incremental_strategy
    if strategy == "delete+insert" and (keyless := [s.name for s in specs if s.incremental_key is None]):
        raise UsageError(
            f"--incremental-strategy delete+insert replaces the rows of the interval by their incremental "
            f"key, which {', '.join(keyless)} do not have; use replace, merge or append for them"
        )
    if args.incremental_key is not None:
        check_incremental_key(args.incremental_key.strip(), specs)
    primary_key = split_names(args.primary_key)
    if primary_key:
        check_columns("--primary-key", one_table("--primary-key", specs), primary_key)
        if primary_key == [specs[0].primary_key]:
            primary_key = []  # the table's own
    columns = None
    if args.columns:
        columns = parse_column_entries(one_table("--columns", specs), args.columns)
    if excluded := split_names(args.sql_exclude_columns):
        spec = one_table("--sql-exclude-columns", specs)
        columns = exclude_columns(spec, columns or [], excluded, primary_key)
    return WriteOptions(
        full_refresh=args.full_refresh,
        incremental_strategy=strategy,
        primary_key=tuple(primary_key) if primary_key else None,
        columns=tuple(columns) if columns else None,
    )


def check_incremental_key(key: str, specs: Sequence[TableSpec]) -> None:
    """ingestr's ``--incremental-key`` is each table's own here: Klaviyo filters by a fixed key."""
    for spec in specs:
        if spec.incremental_key != key:
            own = f"is {spec.incremental_key!r}" if spec.incremental_key else "does not exist"
            raise UsageError(
                f"--incremental-key {shown(key)}: Klaviyo filters {spec.name} by a fixed key, which {own}; "
                "leave the flag out"
            )


def staging_dir_from_flag(raw: str | None) -> str | None:
    """``--pipelines-dir``: where the run stages its files (``OMNILOAD_STAGING_DIR``), checked now."""
    if raw is None:
        return None
    try:
        return settings.parse_staging_dir(raw)
    except settings.SettingsError as exc:
        raise UsageError(f"--pipelines-dir (the run's staging directory): {exc}") from None


# -- the flags' declarations ---------------------------------------------------------------------


def add_write_flags(cmd: argparse.ArgumentParser) -> None:
    """ingestr's write flags: ``--incremental-strategy``, ``--incremental-key``, ``--primary-key``,
    ``--columns``, ``--sql-exclude-columns`` and ``--full-refresh``."""
    cmd.add_argument(
        "--incremental-strategy",
        type=parse_strategy,
        metavar="STRATEGY",
        help="merge (upsert by the primary key), replace (the table becomes this run's rows), append "
        "(insert, keeping what is there), delete+insert (delete the interval's rows by the incremental "
        "key, then insert), or none: the table's own, the default (merge for the tables with an "
        "incremental key, replace for the rest; ingestr's default is replace); scd2 is refused",
    )
    cmd.add_argument(
        "--incremental-key",
        metavar="COLUMN",
        help="accepted only as the table's own key (events: datetime; most tables: updated or "
        "updated_at), the one Klaviyo filters by; tables without one take none",
    )
    cmd.add_argument(
        "--primary-key",
        action="append",
        metavar="COLUMN",
        help="the column(s) that identify a row for merge and delete+insert, instead of id; repeat the "
        "flag or separate with commas for a composite key; one --source-table only",
    )
    cmd.add_argument(
        "--columns",
        action="append",
        metavar="NAME[:TYPE],...",
        help="ingestr's column types: name:type (text, bigint, double, bool, timestamp, date, time, "
        "decimal, json, binary, or a DuckDB type) types the column when the table or column is created; "
        "a bare name (omniload's addition) writes only the named columns and the key columns; renames "
        "are refused; one --source-table only",
    )
    cmd.add_argument(
        "--sql-exclude-columns",
        action="append",
        metavar="COLUMN",
        help="columns not to write (repeat or separate with commas); key columns cannot be excluded; "
        "one --source-table only",
    )
    cmd.add_argument(
        "--full-refresh",
        action="store_true",
        help="ignore the state and refresh the table completely: it becomes this run's rows, whatever "
        "the strategy (ingestr drops and reloads it; a failed run's checkpoints are ignored too)",
    )


def add_no_op_flags(cmd: argparse.ArgumentParser) -> None:
    """ingestr flags whose only values that apply are what omniload does anyway."""
    group = cmd.add_argument_group("ingestr flags accepted with the value omniload already uses")
    group.add_argument(
        "--loader-file-format", type=parse_loader_format, metavar="parquet", help="omniload stages Parquet"
    )
    group.add_argument(
        "--schema-naming",
        type=parse_schema_naming,
        metavar="{default,auto,snake_case}",
        help="omniload's names are snake_case; direct is refused",
    )
    group.add_argument(
        "--schema-contract",
        type=parse_schema_contract,
        metavar="evolve",
        help="omniload adds new attributes as columns and widens types; freeze and discard_* are refused",
    )


#: ingestr flags that cannot apply to a Klaviyo -> DuckDB load: whether each takes a value, and why.
STREAM_ONLY = "cannot apply: it is only valid with --stream (CDC and message-broker sources)"
UNCHANGED = "not supported: omniload writes Klaviyo's values unchanged"
WHOLE_WINDOWS = "Klaviyo is read in whole windows: narrow --interval-start/--interval-end instead"
REFUSED_FLAGS: dict[str, tuple[bool, str]] = {
    "--partition-by": (True, "cannot apply: DuckDB tables have no partition key"),
    "--cluster-by": (True, "cannot apply: DuckDB tables have no clustering key"),
    "--sql-backend": (
        True,
        "cannot apply: it picks the reader of SQL sources; Klaviyo is read through its API",
    ),
    "--sql-reflection-level": (
        True,
        "cannot apply: it reflects SQL sources' schemas; Klaviyo's columns come from omniload's catalogue",
    ),
    "--sql-limit": (True, f"cannot apply: it caps the rows read from SQL sources; {WHOLE_WINDOWS}"),
    "--yield-limit": (
        True,
        f"not supported: a partial window would leave its merge incomplete; {WHOLE_WINDOWS}",
    ),
    "--staging-bucket": (
        True,
        "cannot apply: it stages loads of cloud warehouses; DuckDB loads the run's local Parquet files "
        "(--pipelines-dir)",
    ),
    "--staging-dataset": (
        True,
        "cannot apply: it names the staging schema of warehouse merges; omniload merges its staged files "
        "in one DuckDB transaction",
    ),
    "--loader-file-size": (True, "not supported: omniload stages Parquet files of a fixed 20,000 rows"),
    "--mask": (True, f"{UNCHANGED}; mask in a view or downstream model"),
    "--trim-whitespace": (False, f"{UNCHANGED}; trim in a view or downstream model"),
    "--no-load-timestamp": (
        False,
        "not supported: the _loaded_at column stays, merges and the deletion sweep rely on it",
    ),
    "--no-inference": (
        False,
        "cannot apply: omniload infers no schema, Klaviyo's columns and types come from its catalogue",
    ),
    "--incremental-predicate": (
        True,
        "not supported: omniload's DuckDB merge takes no SQL predicate (--interval-start/--interval-end "
        "bound the rows)",
    ),
    "--stream": (False, "cannot apply: streaming is for CDC and message-broker sources, not Klaviyo's API"),
    "--flush-interval": (True, STREAM_ONLY),
    "--flush-records": (True, STREAM_ONLY),
    "--metrics-addr": (True, STREAM_ONLY),
    "--query-annotations": (
        True,
        "cannot apply: it tags warehouse queries for cost attribution; DuckDB has no query tags",
    ),
    "--extract-partition-by": (
        True,
        "cannot apply: omniload splits each window into parallel pieces by the table's incremental key "
        "itself (--extract-parallelism)",
    ),
    "--extract-partition-interval": (
        True,
        "cannot apply: omniload splits each window into parallel pieces itself (--extract-parallelism)",
    ),
    "--disable-prestaging": (
        False,
        "cannot apply: it is for schema-inferred sources; omniload's catalogue fixes Klaviyo's schema",
    ),
}


class RefusedFlag(argparse.Action):
    """An ingestr flag that cannot apply: using it is a one-line usage error saying why."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> NoReturn:
        parser.error(f"{option_string}: {self.help}")


def add_refused_flags(cmd: argparse.ArgumentParser) -> None:
    """:data:`REFUSED_FLAGS`, listed in ``--help`` with their reasons."""
    group = cmd.add_argument_group(
        "ingestr flags that cannot apply to a Klaviyo -> DuckDB load (refused, with the reason below)"
    )
    for flag, (takes_value, reason) in REFUSED_FLAGS.items():
        group.add_argument(
            flag,
            action=RefusedFlag,
            nargs="?" if takes_value else 0,
            metavar="VALUE",
            help=reason,
            default=argparse.SUPPRESS,
        )
