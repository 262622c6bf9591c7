"""Turning JSON:API resource objects into table rows with stable column types."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.windows import parse_datetime

#: DuckDB type -> Arrow type of the staged column. JSON travels as text.
ARROW_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "JSON": pa.string(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
}

#: DuckDB type of attributes the catalogue does not know: kept verbatim as JSON.
EXTRA_COLUMN_TYPE = "JSON"

_SAFE_NAME = re.compile(r"[^0-9a-zA-Z_]+")


def column_name(attribute: str) -> str:
    """A DuckDB-friendly column name for an attribute (``$source`` -> ``_source``)."""
    name = _SAFE_NAME.sub("_", attribute).strip("_").lower()
    return name or "_"


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _to_varchar(value: Any) -> str:
    return value if isinstance(value, str) else _json(value)


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _to_bigint(value: Any) -> int:
    if isinstance(value, bool):
        number = int(value)
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) or (isinstance(value, float) and value.is_integer()):
        number = int(value)
    else:
        raise ValueError(f"not an integer: {value!r}")
    if not INT64_MIN <= number <= INT64_MAX:
        raise OverflowError(f"integer out of BIGINT range: {value!r}")
    return number


def _to_double(value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    return float(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"not a boolean: {value!r}")


def _to_timestamp(value: Any) -> datetime | None:
    return parse_datetime(value)


CONVERTERS = {
    "VARCHAR": _to_varchar,
    "JSON": _json,
    "TIMESTAMPTZ": _to_timestamp,
    "BIGINT": _to_bigint,
    "DOUBLE": _to_double,
    "BOOLEAN": _to_bool,
}


class RowBuilder:
    """Builds rows of one table; remembers the extra columns seen and values that did not fit.

    A value that cannot be converted to its documented type (Klaviyo sent ``"12"`` where a number
    was documented, say) is not dropped: the row keeps it as JSON in ``<column>__raw`` and the
    typed column is NULL, so no data is lost and the column's type never drifts.
    """

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.types = spec.column_types()
        self._attr_columns = {name: column_name(name) for name in spec.columns}
        self._converters = {col: CONVERTERS[t] for col, t in self.types.items()}
        self.extra_columns: dict[str, str] = {}

    def row(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """One row: ``id``, each attribute, relationship ids; unknown attributes as JSON."""
        row: dict[str, Any] = {self.spec.primary_key: resource.get("id")}
        attributes = resource.get("attributes") or {}
        for attr, value in attributes.items():
            col = self._attr_columns.get(attr)
            if col is None:
                col = column_name(attr)
                if col in self.types:  # a documented name in another spelling
                    self._put(row, col, value)
                    continue
                self.extra_columns.setdefault(col, EXTRA_COLUMN_TYPE)
                row[col] = None if value is None else _json(value)
                continue
            self._put(row, col, value)
        relationships = resource.get("relationships") or {}
        for rel, body in relationships.items():
            if not isinstance(body, Mapping) or "data" not in body:
                continue
            data = body["data"]
            col = self.spec.relationship_column(rel)
            if isinstance(data, list):
                if rel not in self.spec.relationships:
                    col = rel.replace("-", "_") + "_ids"
                    self.extra_columns.setdefault(col, "JSON")
                row[col] = _json([d.get("id") for d in data if isinstance(d, Mapping)])
            elif isinstance(data, Mapping):
                if rel not in self.spec.relationships:
                    self.extra_columns.setdefault(col, "VARCHAR")
                row[col] = data.get("id")
            else:
                row[col] = None
        return row

    def _put(self, row: dict[str, Any], col: str, value: Any) -> None:
        if value is None:
            row[col] = None
            return
        try:
            row[col] = self._converters[col](value)
        except (TypeError, ValueError, OverflowError, OSError):
            raw = f"{col}__raw"
            self.extra_columns.setdefault(raw, "JSON")
            row[col] = None
            row[raw] = _json(value)

    def column_types(self) -> dict[str, str]:
        """Every column seen so far with its DuckDB type, documented ones first."""
        return {**self.types, **self.extra_columns}

    def to_arrow(self, rows: Iterable[dict[str, Any]]) -> pa.Table:
        """An Arrow table of ``rows`` with every column seen so far, typed as documented."""
        rows = list(rows)
        types = self.column_types()
        arrays = {}
        fields = []
        for col, duck_type in types.items():
            arrow_type = ARROW_TYPES.get(duck_type, pa.string())
            fields.append(pa.field(col, arrow_type))
            arrays[col] = pa.array([r.get(col) for r in rows], type=arrow_type)
        return pa.Table.from_pydict(arrays, schema=pa.schema(fields))


def incremental_value(spec: TableSpec, resource: Mapping[str, Any]) -> datetime | None:
    """The parsed incremental key of a resource object, or ``None``."""
    if spec.incremental_key is None:
        return None
    attributes = resource.get("attributes") or {}
    try:
        return parse_datetime(attributes.get(spec.incremental_key))
    except (ValueError, OverflowError, OSError):
        return None
