"""A ClickHouse HTTP interface on 127.0.0.1, answered by chdb: a stand-in server for tests.

No ClickHouse server can be installed here (Debian's is the 2018 release), yet the server executor
(clickhouse-connect) deserves to be exercised for real: its parameter binding, Arrow inserts and
Arrow results. This speaks just enough of the HTTP protocol for that: the SQL arrives in the body
or the ``query`` URL parameter, ``param_<name>`` carries query parameters (the same text chdb takes),
``INSERT ... FORMAT <fmt>`` takes the body as data, and the output is whatever format the SQL names.
Everything runs through one chdb session, one request at a time.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_FORMAT = re.compile(r"\s+FORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_INSERT = re.compile(r"^\s*INSERT\s+INTO\s", re.IGNORECASE)
_CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s", re.IGNORECASE)


def _decode(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    if encoding == "gzip":
        import gzip

        return gzip.decompress(body)
    if encoding == "lz4":
        import lz4.frame

        return bytes(lz4.frame.decompress(body))
    raise ValueError(f"unsupported Content-Encoding {encoding}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        return None

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        url = urlsplit(self.path)
        args = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = _decode(self.rfile.read(length), self.headers.get("Content-Encoding"))
        if url.path in ("/ping", "/") and "query" not in args and not body:
            return self._send(200, b"Ok.\n")
        sql = args.get("query")
        data = body
        if sql is None:
            sql, data = body.decode(), b""
        params = {k[len("param_"):]: v for k, v in args.items() if k.startswith("param_")}
        try:
            out = self.server.run(sql, data, params, args.get("database"))
        except Exception as exc:  # an engine error, as a server reports it
            return self._send(500, f"{exc}\n".encode(), {"X-ClickHouse-Exception-Code": "1"})
        self._send(200, out, {"X-ClickHouse-Timezone": "UTC", "X-ClickHouse-Server-Display-Name": "chdb-fake"})

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, path: str, pause_ttl: bool, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.pause_ttl = pause_ttl
        from chdb import session

        session_cls: Any = session.Session  # chdb ships no annotations
        self.session: Any = session_cls(path)
        self.lock = threading.Lock()
        self.requests: list[str] = []

    def run(self, sql: str, data: bytes, params: dict[str, str], database: str | None) -> bytes:
        with self.lock:
            self.requests.append(sql)
            if database:
                self.session.query(f"USE `{database}`", "Null")
            match = _FORMAT.search(sql)
            fmt = match.group(1) if match else "TabSeparated"
            if _INSERT.match(sql) and match:
                with self.session.send_insert(sql[: match.start()], fmt) as inserter:
                    inserter.append(data)
                    inserter.finish()
                return b""
            result = self.session.query(sql, fmt if not match else "TabSeparated", params=params or None)
            if self.pause_ttl and _CREATE_TABLE.match(sql):
                self._stop_ttl_merges()
            return bytes(result.bytes())

    def _stop_ttl_merges(self) -> None:
        """Like an operator's ``SYSTEM STOP TTL MERGES``: fixed-time tests must not race the clock."""
        tables = self.session.query(
            "SELECT database, name FROM system.tables WHERE engine LIKE '%MergeTree' "
            "AND database NOT IN ('system', 'INFORMATION_SCHEMA', 'information_schema')",
            "JSONEachRow",
        )
        for line in bytes(tables.bytes()).decode().splitlines():
            row = json.loads(line)
            self.session.query(f"SYSTEM STOP TTL MERGES `{row['database']}`.`{row['name']}`", "Null")


@contextmanager
def fake_clickhouse(path: str, pause_ttl: bool = False, port: int = 0) -> Iterator[tuple[str, _Server]]:
    """A running fake server; yields its URL and the server (for its request log).

    ``pause_ttl`` stops TTL merges on every table as it is created, as an operator would on a
    scratch server that runs the contract suite with fixed timestamps.
    """
    server = _Server(path, pause_ttl, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://default:@127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()
        server.session.close()
