"""Access log formats and the writer thread."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from fulcrum.middleware.policy import accesslog
from fulcrum.middleware.policy.accesslog import (
    FORMATS,
    LogRecord,
    LogWriter,
    format_combined,
    format_common,
    format_json,
    open_check,
)

# 10 Oct 2000 13:55:36.25 UTC
WHEN = 971186136.25


def record(**changes: object) -> LogRecord:
    base: dict[str, object] = dict(
        client_ip="192.0.2.7", time=WHEN, method="GET", target="/apache_pb.gif?x=1", version="1.1", status=200,
        bytes_sent=2326, referer="http://www.example.com/start.html", user_agent="Mozilla/4.08",
        upstream="app-1", duration_ms=12.3456, upstream_ms=10.5, request_id="r-42", route="api",
    )  # fmt: skip
    return LogRecord(**{**base, **changes})  # type: ignore[arg-type]


def test_common() -> None:
    line = format_common(record())
    assert line == '192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] "GET /apache_pb.gif?x=1 HTTP/1.1" 200 2326'


def test_common_without_body_bytes() -> None:
    assert format_common(record(bytes_sent=0, status=304)).endswith('" 304 -')


def test_common_time_is_utc_and_formatted_per_second() -> None:
    assert "[01/Jan/1970:00:00:00 +0000]" in format_common(record(time=0.9))
    assert "[29/Feb/2024:23:59:59 +0000]" in format_common(record(time=1709251199.999))
    assert "[01/Mar/2024:00:00:00 +0000]" in format_common(record(time=1709251200.0))


def test_combined() -> None:
    assert format_combined(record()) == (
        '192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] "GET /apache_pb.gif?x=1 HTTP/1.1" 200 2326 '
        '"http://www.example.com/start.html" "Mozilla/4.08" upstream=app-1 duration_ms=12.346 request_id=r-42'
    )


def test_combined_missing_values() -> None:
    line = format_combined(record(referer=None, user_agent="", upstream=None, request_id=""))
    assert line.endswith(' 2326 "-" "-" upstream=- duration_ms=12.346 request_id=-')


@pytest.mark.parametrize(
    ("field", "value", "logged"),
    [
        ("user_agent", 'evil" "x', 'evil\\" \\"x'),
        ("user_agent", "back\\slash", "back\\\\slash"),
        ("user_agent", "new\nline\r\t\x00\x7f", "new\\x0aline\\x0d\\x09\\x00\\x7f"),
        ("user_agent", "caf\xe9", "caf\\xe9"),
        ("user_agent", "snow\u2603man\U0001f600", "snow\\u2603man\\U0001f600"),
        ("referer", '"quoted"', '\\"quoted\\"'),
        ("target", '/a"b c\n', '/a\\"b c\\x0a'),
        ("request_id", "has space", "has\\x20space"),
        ("upstream", "a=b c", "a=b\\x20c"),
    ],
)
def test_client_text_is_escaped(field: str, value: str, logged: str) -> None:
    line = format_combined(record(**{field: value}))
    assert logged in line
    assert line.isascii() and line.isprintable()


def test_json() -> None:
    line = format_json(record(user_agent="caf\xe9 \"x\"\n", error="upstream timeout", attempts=2))
    assert "\n" not in line and line.isascii()
    data = json.loads(line)
    assert data == {
        "client_ip": "192.0.2.7", "time": "2000-10-10T13:55:36.250Z", "method": "GET",
        "target": "/apache_pb.gif?x=1", "version": "1.1", "status": 200, "bytes_sent": 2326,
        "referer": "http://www.example.com/start.html", "user_agent": "caf\xe9 \"x\"\n", "upstream": "app-1",
        "duration_ms": 12.3456, "upstream_ms": 10.5, "request_id": "r-42", "route": "api",
        "error": "upstream timeout", "attempts": 2,
    }  # fmt: skip
    assert list(data) == list(accesslog.FIELD_NAMES)  # in field order
    assert all(hasattr(record(), name) for name in data)


def test_json_nulls_and_odd_numbers() -> None:
    data = json.loads(format_json(record(referer=None, upstream=None, upstream_ms=None, duration_ms=float("nan"))))
    assert data["referer"] is None and data["upstream"] is None and data["upstream_ms"] is None
    assert data["duration_ms"] is None
    assert data["error"] is None and data["attempts"] == 1
    assert json.loads(format_json(record(time=1709251199.9999)))["time"] == "2024-02-29T23:59:59.999Z"


def test_formats_table() -> None:
    assert dict(FORMATS) == {"common": format_common, "combined": format_combined, "json": format_json}


def test_writer_appends_lines_in_order(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_text("earlier\n")
    writer = LogWriter(str(path))
    for i in range(1000):
        writer.write(f"line {i}")
        if i % 97 == 0:
            writer.flush()
    writer.flush()
    writer.flush()  # nothing pending: no empty batch
    writer.write("last")
    writer.close()
    assert path.read_text().splitlines() == ["earlier", *(f"line {i}" for i in range(1000)), "last"]
    assert writer.dropped == 0


def test_writer_with_no_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    writer.close()
    writer.close()  # twice is fine
    assert not path.exists() or path.read_text() == ""


def test_write_after_close_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    writer.write("kept")
    writer.close()
    writer.write("late")
    writer.flush()
    assert path.read_text() == "kept\n"
    assert writer.dropped == 1


def test_writer_to_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    writer = LogWriter("-")
    writer.write("to stdout")
    writer.close()
    assert capfd.readouterr().out == "to stdout\n"


def test_unwritable_file_logs_once_and_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = LogWriter(str(tmp_path / "missing" / "access.log"))
    with caplog.at_level(logging.ERROR, logger="fulcrum.accesslog"):
        for i in range(3):
            writer.write(f"line {i}")
            writer.flush()
        writer.close()
    errors = [r for r in caplog.records if r.name == "fulcrum.accesslog"]
    assert len(errors) == 1
    assert "cannot be written" in errors[0].getMessage()


def test_writer_recovers_when_the_file_can_be_opened_again(tmp_path: Path) -> None:
    failed = threading.Event()

    class Signal(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            failed.set()

    handler = Signal()
    logger = logging.getLogger("fulcrum.accesslog")
    logger.addHandler(handler)
    try:
        folder = tmp_path / "later"
        writer = LogWriter(str(folder / "access.log"))
        writer.write("lost")
        writer.flush()
        assert failed.wait(timeout=10)
        folder.mkdir()
        writer.write("found")
        writer.close()
    finally:
        logger.removeHandler(handler)
    assert (folder / "access.log").read_text() == "found\n"


def test_open_check(tmp_path: Path) -> None:
    assert open_check("-") is None
    assert open_check(str(tmp_path / "new.log")) is None
    assert not (tmp_path / "new.log").exists()  # checking creates nothing
    existing = tmp_path / "old.log"
    existing.write_text("x")
    assert open_check(str(existing)) is None
    assert open_check(str(tmp_path)) == f"cannot append to {tmp_path}: it is a directory"
    missing = tmp_path / "nope" / "a.log"
    assert open_check(str(missing)) == f"cannot create {missing}: the directory {tmp_path / 'nope'} does not exist"


def test_lines_beyond_the_pending_limit_are_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accesslog, "_MAX_PENDING_LINES", 3)
    path = tmp_path / "access.log"
    writer = LogWriter(str(path))
    for i in range(5):
        writer.write(f"line {i}")
    writer.close()
    assert path.read_text().splitlines() == ["line 0", "line 1", "line 2"]
    assert writer.dropped == 2


def test_batches_are_dropped_when_the_thread_falls_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accesslog, "_MAX_QUEUED_BATCHES", 0)
    writer = LogWriter(str(tmp_path / "access.log"))
    writer.write("a")
    writer.write("b")
    writer.flush()
    writer.close()
    assert writer.dropped == 2
