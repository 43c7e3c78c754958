"""The access log: buffered JSON lines, rotated by size, shared safely by several processes."""

from __future__ import annotations

from pathlib import Path

import orjson

from ark.gateway.accesslog import AccessLog


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_rotates_by_size_and_keeps_the_newest_files(tmp_path: Path) -> None:
    log = AccessLog("", tmp_path, max_bytes=1000, keep=2)
    for i in range(120):  # ~40 bytes a line: four rotations, two files kept
        log.write({"request_id": f"{i:04d}", "status": 200})
        log.flush()
    log.close()
    live = tmp_path / "access.jsonl"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["access.jsonl", "access.jsonl.1", "access.jsonl.2"]
    assert all(p.stat().st_size <= 1000 + 64 for p in tmp_path.iterdir())
    # .2 is older than .1, which is older than the live file; each holds whole lines, none repeated
    kept = [
        row["request_id"]
        for name in ("access.jsonl.2", "access.jsonl.1", "access.jsonl")
        for row in lines(tmp_path / name)
    ]
    assert kept == sorted(kept) and len(set(kept)) == len(kept) and kept[-1] == "0119"
    assert int(str(kept[0])) > 0  # the oldest lines went beyond keep
    assert live.stat().st_mode & 0o777 == 0o600


def test_a_file_rotated_by_someone_else_is_reopened(tmp_path: Path) -> None:
    log = AccessLog("", tmp_path, max_bytes=10_000, keep=3)
    log.write({"n": 1})
    log.flush()
    (tmp_path / "access.jsonl").rename(tmp_path / "access.jsonl.1")  # another process, or logrotate
    log.write({"n": 2})
    log.flush()  # lands in the renamed file (an append), then the log reopens the path
    log.write({"n": 3})
    log.close()
    assert lines(tmp_path / "access.jsonl.1") == [{"n": 1}, {"n": 2}]
    assert lines(tmp_path / "access.jsonl") == [{"n": 3}]


def test_no_rotation_when_switched_off(tmp_path: Path) -> None:
    log = AccessLog("", tmp_path, max_bytes=0)
    for i in range(100):
        log.write({"n": i})
        log.flush()
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["access.jsonl"]
    assert len(lines(tmp_path / "access.jsonl")) == 100
