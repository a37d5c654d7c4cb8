"""Merging rollup rows read as Arrow: groups, counters and sketch quantiles in numpy (DuckDB's reads).

Why not in SQL: DuckDB has no ``sumMap``, so merging sketches there means unnesting every map entry
and hash-aggregating (group, sketch, bucket): ~30 ns an entry on the 2-core development machine, and
a 30-day stats query at seed scale merges ~3M entries. Arrow hands the map columns over as flat
key/value buffers (no Python object per bucket), and ``sketch.grouped_quantiles`` merges them with
``np.add.at`` into a dense matrix at about a third of that cost; grouping the ~30k input rows and summing their counters
here too avoids a second pass over them in SQL (a window or join that carries the maps costs more
than the merge).

The input is one row per rollup row or raw request (``duckdb_rollup.stats_sql``): the group columns,
the counters of ``schema.ROLLUP_COUNTERS``, per sketch its map column (NULL when no value was known)
and a scalar bucket index (a raw row's single value, NULL otherwise). Groups come out in the order
of the raw stats query's ``ORDER BY``: ascending, NULLs last.

ClickHouse merges in SQL (``sumMap`` is native there); in-process (chdb) its merged maps come back
as Arrow too, and ``row_quantiles`` finishes them here (``clickhouse_rollup.stats_sql``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from infersight.store import schema
from infersight.store.sketch import Entries, grouped_quantiles

SCALAR_PREFIX = "_i"  # column ``_i<m>``: the bucket index of a raw row's value for sketch m


def _group_ids(table: pa.Table, keys: Sequence[str]) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """Each row's group (0-based, in output order) and the groups' key values.

    Every key column is dictionary-encoded (NULL is a value of its own, as in ``GROUP BY``) and the
    codes are combined column by column, re-densified with ``np.unique`` so they never overflow.
    """
    if not keys:
        return np.zeros(table.num_rows, dtype=np.int64), [()]
    code = np.zeros(table.num_rows, dtype=np.int64)
    for key in keys:
        enc = pc.dictionary_encode(table.column(key).combine_chunks(), null_encoding="encode")
        code = code * len(enc.dictionary) + enc.indices.to_numpy(zero_copy_only=False)
        code = np.unique(code, return_inverse=True)[1].reshape(-1)
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    columns = [table.column(key).take(pa.array(first)).to_pylist() for key in keys]
    values = list(zip(*columns, strict=True))
    order = sorted(range(len(values)), key=lambda i: tuple((v is None, v) for v in values[i]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[inverse.reshape(-1)], [values[i] for i in order]


def _sums(column: pa.ChunkedArray, groups: np.ndarray, ngroups: int, kind: str) -> list[Any]:
    values = column.to_numpy()
    if kind == "float":
        return [float(x) for x in np.bincount(groups, weights=values, minlength=ngroups)]
    out = np.zeros(ngroups, dtype=np.int64)
    np.add.at(out, groups, values.astype(np.int64))  # exact, unlike bincount's float weights
    return [int(x) for x in out]


def _map_entries(maps: pa.ChunkedArray, groups: np.ndarray) -> Entries:
    """The (group, bucket, count) entries of a map column whose row i belongs to ``groups[i]``."""
    maps = maps.combine_chunks()
    offsets = maps.offsets.to_numpy()
    lengths = np.diff(offsets)
    keys = maps.keys.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    counts = maps.items.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    owner = np.repeat(groups, lengths)
    if maps.null_count:  # Arrow lets a NULL map keep an offset range: drop whatever it spans
        valid = maps.is_valid().to_numpy(zero_copy_only=False)
        if lengths[~valid].any():
            keep = np.repeat(valid, lengths)
            owner, keys, counts = owner[keep], keys[keep], counts[keep]
    return owner, keys, counts


def _sketch_entries(table: pa.Table, m: int, column: str, groups: np.ndarray) -> list[Entries]:
    """The entries of one sketch: its maps' (group, bucket, count), then the raw rows' single values."""
    parts = [_map_entries(table.column(column), groups)]
    scalar = table.column(f"{SCALAR_PREFIX}{m}")
    if scalar.null_count < len(scalar):
        known = scalar.is_valid().to_numpy(zero_copy_only=False)
        raw = scalar.filter(scalar.is_valid()).to_numpy()
        parts.append((groups[known], raw, np.ones(len(raw), dtype=np.int64)))
    return parts


def row_quantiles(maps: pa.ChunkedArray, qs: Sequence[float]) -> list[list[float | None]]:
    """The quantiles of each row's sketch, for maps an engine has already merged per group
    (ClickHouse's ``sumMap``): no grouping, just the dense count matrix of ``grouped_quantiles``."""
    n = len(maps)
    quantiles = grouped_quantiles([_map_entries(maps, np.arange(n, dtype=np.int64))], n, qs)
    return [[None if math.isnan(x) else x for x in q] for q in quantiles.tolist()]


def merged_rows(table: pa.Table, keys: Sequence[str], qs: Sequence[float]) -> list[dict[str, Any]]:
    """One row per group: its key values, summed counters and, per sketch, ``<prefix>_q`` (quantiles).

    Without keys there is exactly one row, even over no input.
    """
    groups, values = _group_ids(table, keys)
    ngroups = len(values)
    rows: list[dict[str, Any]] = [dict(zip(keys, v, strict=True)) for v in values]
    for name, kind in schema.ROLLUP_COUNTERS:
        for row, total in zip(rows, _sums(table.column(name), groups, ngroups, kind), strict=True):
            row[name] = total
    for m, (column, prefix, _) in enumerate(schema.ROLLUP_SKETCHES):
        quantiles = grouped_quantiles(_sketch_entries(table, m, column, groups), ngroups, qs)
        for row, q in zip(rows, quantiles.tolist(), strict=True):
            row[f"{prefix}_q"] = [None if math.isnan(x) else x for x in q]
    return rows
