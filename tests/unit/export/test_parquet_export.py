"""`infersight export parquet` output reads back with pyarrow, pandas and DuckDB, partitioned hive-style."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import duckdb
import pandas as pd
import pyarrow.dataset as ds

from infersight.export.parquet import export_parquet
from infersight.model import RequestRecord
from infersight.store.duckdb_store import DuckDBStore

T0 = datetime(2026, 11, 20, 23, 59, 0, tzinfo=timezone.utc)


def records() -> list[RequestRecord]:
    out = []
    for i in range(40):
        out.append(RequestRecord(
            trace_id=f"{i:032x}", span_id=f"{i:016x}", tenant_id="acme" if i % 2 else "globex",
            model_id="openai/gpt-4o" if i % 4 == 0 else "sim-large", backend="sim",
            started_at=(T0 + timedelta(seconds=3 * i)).isoformat(), ttft_ms=12.5, total_ms=100.0 + i,
            status_code=200, prompt_tokens=i, completion_tokens=2 * i, stream=bool(i % 3)))
    return out


def test_export_round_trip(tmp_path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    store.write_requests(records())
    out = tmp_path / "export"
    summary = export_parquet(store, T0, T0 + timedelta(hours=1), out, page_rows=7, chunk_rows=15)
    store.close()
    assert summary.rows == 40 and summary.files >= 4

    dirs = {p.relative_to(out).parts[:3] for p in out.rglob("*.parquet")}
    assert ("date=2026-11-20", "tenant=acme", "model=sim-large") in dirs
    assert ("date=2026-11-21", "tenant=globex", "model=openai%2Fgpt-4o") in dirs

    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 40
    assert sorted(table.column("prompt_tokens").to_pylist()) == list(range(40))

    frame = pd.read_parquet(out)
    assert len(frame) == 40 and set(frame["tenant"].astype(str)) == {"acme", "globex"}

    rows = duckdb.sql(
        f"SELECT tenant, count(*) AS n, sum(completion_tokens) AS c FROM "
        f"read_parquet('{out}/**/*.parquet', hive_partitioning=true) GROUP BY tenant ORDER BY tenant"
    ).fetchall()
    assert rows == [("acme", 20, sum(2 * i for i in range(40) if i % 2)),
                    ("globex", 20, sum(2 * i for i in range(40) if not i % 2))]


def test_export_window_and_tenant(tmp_path) -> None:
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    store.write_requests(records())
    summary = export_parquet(store, T0, T0 + timedelta(seconds=30), tmp_path / "out", tenant_id="acme")
    store.close()
    assert summary.rows == 5  # i = 1, 3, 5, 7, 9


def test_exporting_a_window_again_replaces_it_and_other_windows_stay(tmp_path) -> None:
    """Was: each run added its files beside the last one's, so a retried daily job doubled the rows."""
    store = DuckDBStore(str(tmp_path / "s.duckdb"))
    store.migrate()
    store.write_requests(records())
    out = tmp_path / "export"
    day = (T0, T0 + timedelta(seconds=60))  # i = 0..19
    first = export_parquet(store, *day, out)
    second = export_parquet(store, *day, out)  # the retry
    other = export_parquet(store, T0 + timedelta(seconds=60), T0 + timedelta(hours=1), out)  # i = 20..39
    acme = export_parquet(store, *day, out, tenant_id="acme")  # another filter: another export
    store.close()
    assert first.rows == second.rows == other.rows == 20 and acme.rows == 10
    assert first.replaced == 0 and second.replaced == first.files and other.replaced == acme.replaced == 0
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    ids = sorted(table.column("prompt_tokens").to_pylist())
    assert ids == sorted(list(range(40)) + [i for i in range(20) if i % 2])  # once each, plus acme's own export


def test_the_cli_says_when_it_replaced_an_earlier_export(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from infersight.cli import main

    (tmp_path / "data").mkdir()
    store = DuckDBStore(str(tmp_path / "data" / "infersight.duckdb"))
    store.migrate()
    store.write_requests(records())
    store.close()
    config = tmp_path / "gw.yaml"
    config.write_text("backends: [{name: a, url: 'http://127.0.0.1:9/v1', models: [m]}]\n"
                      f"tenants: [{{id: t, api_keys: [k]}}]\nstorage: {{path: '{tmp_path / 'data'}'}}\n")
    argv = ["export", "parquet", "--config", str(config), "--since", "2026-11-20T00:00:00Z",
            "--until", "2026-11-22T00:00:00Z", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "exported 40 requests" in first and "replaced" not in first
    assert "exported 40 requests" in second and "replaced" in second and "of an earlier export of this window" in second


def eval_rows() -> list[dict[str, object]]:
    """Two dimensions per request; every third judged an hour after its request (late judgement)."""
    rows = []
    for i in range(30):
        started = T0 + timedelta(seconds=3 * i)
        for dim, score in (("relevance", float(1 + i % 5)), ("factual_fidelity", 2.5)):
            rows.append({"trace_id": f"{i:032x}", "span_id": f"{i:016x}", "tenant_id": "acme" if i % 2 else "globex",
                         "model_id": "openai/gpt-4o" if i % 4 == 0 else "sim-large", "evaluator": "llm_judge",
                         "evaluator_version": "v1", "dimension": dim, "score": score, "judge_tokens": 10,
                         "evaluated_at": started + timedelta(hours=1 if i % 3 == 0 else 0, seconds=2),
                         "request_started_at": started, "use_case": "chat"})
    return rows


def test_eval_results_export_by_the_judged_requests_day(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Scores for a warehouse: the same layout as requests, dated by the request judged (as /quality
    windows them), in a window export of its own that never replaces the requests' files."""
    from infersight.cli import main

    (tmp_path / "data").mkdir()
    store = DuckDBStore(str(tmp_path / "data" / "infersight.duckdb"))
    store.migrate()
    store.write_requests(records())
    store.write_rows("eval_results", eval_rows())
    out = tmp_path / "out"
    window = (T0, T0 + timedelta(seconds=60))  # requests i = 0..19, whenever they were judged
    requests = export_parquet(store, *window, out)
    scores = tmp_path / "scores"  # a folder of its own: one dataset, one schema
    evals = export_parquet(store, *window, scores, page_rows=7, chunk_rows=9, table="eval_results")
    again = export_parquet(store, *window, scores, table="eval_results")
    store.close()
    assert requests.rows == 20 and evals.rows == again.rows == 40 and again.replaced == evals.files
    table = ds.dataset(scores, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 40 and set(table.column("dimension").to_pylist()) == {"relevance", "factual_fidelity"}
    dirs = {p.relative_to(scores).parts[:3] for p in scores.rglob("*.parquet")}
    # i = 0, 3, 6... were judged an hour later, on the 21st; their requests started on the 20th
    assert ("date=2026-11-20", "tenant=globex", "model=openai%2Fgpt-4o") in dirs
    assert {d[0] for d in dirs} == {"date=2026-11-20"}
    means = duckdb.sql(f"SELECT dimension, avg(score) FROM read_parquet('{scores}/**/*.parquet', "
                       "hive_partitioning=true) GROUP BY dimension ORDER BY dimension").fetchall()
    assert means == [("factual_fidelity", 2.5), ("relevance", sum(1 + i % 5 for i in range(20)) / 20)]
    assert len(list(out.rglob("*.parquet"))) == requests.files  # the requests' export is its own

    config = tmp_path / "gw.yaml"
    config.write_text("backends: [{name: a, url: 'http://127.0.0.1:9/v1', models: [m]}]\n"
                      f"tenants: [{{id: t, api_keys: [k]}}]\nstorage: {{path: '{tmp_path / 'data'}'}}\n")
    assert main(["export", "parquet", "--config", str(config), "--table", "eval_results", "--tenant", "acme",
                 "--out", str(tmp_path / "cli")]) == 0
    assert "exported 30 eval results" in capsys.readouterr().out  # acme: 15 requests, two dimensions each
