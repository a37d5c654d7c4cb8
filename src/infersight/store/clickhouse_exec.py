"""The executor seam of the ClickHouse backend: one SQL text, two ways to run it.

``ClickHouseStore`` builds every statement once, with ClickHouse's own ``{name:Type}`` query
parameters, and hands it to an ``Executor``. Only the executors do I/O:

- ``ChdbExecutor`` runs the statement in-process on chdb (the ClickHouse engine embedded as a library),
  so CI tests the real schema, TTLs, mutations and quantile functions without a server;
- ``ServerExecutor`` sends it to a ClickHouse server over HTTP with clickhouse-connect.

Both move data as Arrow (ArrowStream in, Arrow tables out), so the Python shapes that come back are
the same whichever engine answered. Executors map their failures onto ``StoreUnavailable`` (cannot
reach the server: retry later) and ``StoreError`` (anything else), so the store never sees a driver's
exception types.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import pyarrow as pa

from infersight.store.base import StoreError, StoreUnavailable

Params = Mapping[str, Any]
"""Query parameters by name: ``None``, str, bool, int, float or lists of them. Times are passed
as ``'YYYY-MM-DD HH:MM:SS.ffffff'`` strings (UTC), because clickhouse-connect drops microseconds
from ``datetime`` values."""


class Executor(Protocol):
    """Runs shared SQL; the only place the backend touches an engine."""

    in_process: bool
    """Results cost nothing to move (chdb): fetch merged data and finish in numpy rather than make
    the engine plan extra expressions to shrink it; a server should send little instead."""

    def command(self, sql: str, params: Params | None = None) -> None:
        """Run a statement that returns nothing of interest (DDL, DELETE, ALTER ... UPDATE)."""
        ...

    def query(self, sql: str, params: Params | None = None) -> pa.Table:
        """Run a SELECT and return its result as an Arrow table (zero rows keeps the schema)."""
        ...

    def insert(self, database: str, table: str, data: pa.Table) -> None:
        """Append an Arrow table whose column names match the target table's."""
        ...

    def close(self) -> None: ...


def quote_ident(name: str) -> str:
    """A backquoted identifier; callers only pass names they have already validated."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# ---------------------------------------------------------------------------------------------
# Parameter text: ClickHouse parses query parameters in its "escaped" text format, the same form
# the HTTP interface takes as ``param_<name>``; chdb's ``params`` want that text, so encode here.

_ESCAPES = {"\\": "\\\\", "'": "\\'", "`": "\\`", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"}


def _escape(text: str) -> str:
    return "".join(_ESCAPES.get(ch, ch) for ch in text) if any(c in text for c in _ESCAPES) else text


def encode_param(value: Any, top_level: bool = True) -> str:
    """One parameter value as ClickHouse parameter text (top level unquoted, nested quoted)."""
    if value is None:
        return "\\N" if top_level else "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _escape(value) if top_level else "'" + _escape(value) + "'"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(encode_param(v, top_level=False) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    raise StoreError(f"unsupported query parameter type: {type(value).__name__}")


def arrow_stream_bytes(data: pa.Table) -> bytes:
    """An Arrow table as an IPC stream, the ``ArrowStream`` input format both engines read."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return bytes(sink.getvalue().to_pybytes())


class ChdbExecutor:
    """chdb in-process, on a persistent session directory.

    One lock serialises calls: a chdb connection accepts nothing else while a streaming insert is
    open, and the store's read-then-insert idempotency check must not interleave with itself.
    """

    in_process = True

    def __init__(self, path: str) -> None:
        try:
            from chdb import session as chdb_session
        except ImportError as exc:  # pragma: no cover - chdb is a dependency of this backend
            raise StoreError("the embedded ClickHouse store needs the 'chdb' package") from exc
        self._lock = threading.RLock()
        session_cls: Any = chdb_session.Session  # chdb ships no annotations
        try:
            self._session: Any = session_cls(path)
        except Exception as exc:
            raise StoreError(f"cannot open chdb session at {path}: {exc}") from exc
        self._closed = False

    @staticmethod
    def _params(params: Params | None) -> dict[str, str] | None:
        return {k: encode_param(v) for k, v in params.items()} if params else None

    def _check(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")

    def command(self, sql: str, params: Params | None = None) -> None:
        with self._lock:
            self._check()
            try:
                self._session.query(sql, "Null", params=self._params(params))
            except Exception as exc:
                raise StoreError(f"chdb: {exc}") from exc

    def query(self, sql: str, params: Params | None = None) -> pa.Table:
        with self._lock:
            self._check()
            try:
                result = self._session.query(sql, "ArrowTable", params=self._params(params))
            except Exception as exc:
                raise StoreError(f"chdb: {exc}") from exc
        if not isinstance(result, pa.Table):  # pragma: no cover - guards a chdb API change
            raise StoreError(f"chdb returned {type(result).__name__}, expected a pyarrow.Table")
        return result

    def insert(self, database: str, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        cols = ", ".join(quote_ident(c) for c in data.column_names)
        sql = f"INSERT INTO {quote_ident(database)}.{quote_ident(table)} ({cols})"
        payload = arrow_stream_bytes(data)
        with self._lock:
            self._check()
            try:
                with self._session.send_insert(sql, "ArrowStream") as inserter:
                    inserter.append(payload)
                    inserter.finish()
            except Exception as exc:
                raise StoreError(f"chdb insert into {table}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._session.close()


TRANSIENT_CODES = frozenset({
    159,  # TIMEOUT_EXCEEDED
    202,  # TOO_MANY_SIMULTANEOUS_QUERIES
    203,  # NO_FREE_CONNECTION
    209,  # SOCKET_TIMEOUT
    210,  # NETWORK_ERROR
    241,  # MEMORY_LIMIT_EXCEEDED
    242,  # TABLE_IS_READ_ONLY (replica lost its keeper session)
    252,  # TOO_MANY_PARTS (inserts outpace merges)
    999,  # KEEPER_EXCEPTION
})
"""Server error codes that describe a passing condition: the ingester should retry, not drop."""


class ServerExecutor:
    """A ClickHouse server over HTTP (clickhouse-connect), connected lazily.

    The client is created on first use and dropped after a connection failure, so a store opened
    while ClickHouse is down raises ``StoreUnavailable`` per call (the ingester retries, the bus
    spools) and recovers by itself once the server is back, instead of failing at start-up.
    """

    in_process = False

    def __init__(self, url: str, connect_timeout: float = 5.0, send_receive_timeout: float = 300.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"ClickHouse URL must be http(s)://[user:pass@]host[:port], got {parts.scheme}://...")
        self._url = url
        self._connect_timeout = connect_timeout
        self._send_receive_timeout = send_receive_timeout
        self._client: Any = None
        self._lock = threading.RLock()  # re-entered when a failed connect is mapped
        self._closed = False

    def _get_client(self) -> Any:
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            if self._client is None:
                import clickhouse_connect

                try:
                    self._client = clickhouse_connect.get_client(
                        dsn=self._url,
                        connect_timeout=self._connect_timeout,
                        send_receive_timeout=self._send_receive_timeout,
                        autogenerate_session_id=False,  # sessions serialise concurrent queries
                    )
                except Exception as exc:
                    raise self._map(exc) from exc
            return self._client

    def _map(self, exc: Exception) -> StoreError:
        """Unreachable or overloaded (retrying will help) -> StoreUnavailable; else StoreError."""
        from clickhouse_connect.driver import exceptions as ch_exc

        if isinstance(exc, (ch_exc.OperationalError, OSError)):
            with self._lock:
                self._client = None  # reconnect on the next call
            return StoreUnavailable(f"ClickHouse unreachable: {exc}")
        if getattr(exc, "code", None) in TRANSIENT_CODES:
            return StoreUnavailable(f"ClickHouse busy: {exc}")
        return StoreError(f"ClickHouse: {exc}")

    def _params(self, params: Params | None) -> dict[str, Any] | None:
        # clickhouse-connect applies the same escaping as encode_param to server-side parameters.
        return dict(params) if params else None

    def command(self, sql: str, params: Params | None = None) -> None:
        client = self._get_client()
        try:
            client.command(sql, parameters=self._params(params))
        except Exception as exc:
            raise self._map(exc) from exc

    def query(self, sql: str, params: Params | None = None) -> pa.Table:
        client = self._get_client()
        try:
            return client.query_arrow(sql, parameters=self._params(params), use_strings=True)
        except Exception as exc:
            raise self._map(exc) from exc

    def insert(self, database: str, table: str, data: pa.Table) -> None:
        if data.num_rows == 0:
            return
        client = self._get_client()
        try:
            client.insert_arrow(table, data, database=database)
        except Exception as exc:
            raise self._map(exc) from exc

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # pragma: no cover - closing a dead connection is not an error
                pass
