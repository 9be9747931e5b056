"""``mailtrap-receiver dlq list|replay|purge`` on a real spool file (dlq.py, cli.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from mailtrap_receiver.cli import main
from mailtrap_receiver.spoolfile import SpoolFile, poll_pending


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A spool with three dead letters: two delivery failures and one invalid event."""
    path = tmp_path / "spool.db"
    file = SpoolFile(path, targets=["app", "crm"], dedup_window=3600)
    file.open()
    bodies = {key: orjson.dumps({"event": "bounce", "event_id": key}) for key in ("e1", "e2")}
    [[first, second]] = file.write(
        [
            [
                ("e1", "bounce", bodies["e1"], 1.0, "m1", ("app",)),
                ("e2", "bounce", bodies["e2"], 2.0, "m2", ("crm",)),
            ]
        ]
    ).ids
    file.write(
        [],
        letters=[
            [
                (
                    None,
                    "sha256:x",
                    None,
                    "missing_field",
                    "missing field: event",
                    b"{}",
                    None,
                    None,
                    3.0,
                )
            ]
        ],
        outcomes=[
            (
                "dead",
                "app",
                first,
                20,
                0.0,
                503,
                None,
                "busy",
                "attempts_exhausted",
                "no success in 20 attempts; the last: HTTP 503",
            ),
            (
                "dead",
                "crm",
                second,
                1,
                0.0,
                404,
                None,
                "no such path",
                "rejected",
                "the target refused the event (HTTP 404)",
            ),
        ],
    )
    file.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["dlq", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_prints_a_table_and_json(spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list", "--spool", str(spool))
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["ID", "TARGET", "REASON"]
    assert "attempts_exhausted" in out
    assert "'busy'" in out  # the target's answer
    assert rows[-1] == "3 dead letters"

    code, out, _ = run(capsys, "list", "--spool", str(spool), "--json", "--target", "app")
    assert code == 0
    [letter] = orjson.loads(out)
    assert letter["target"] == "app"
    assert letter["reason"] == "attempts_exhausted"
    assert letter["status"] == 503
    assert letter["attempts"] == 20
    assert letter["response"] == "busy"
    assert letter["event"] == {"event": "bounce", "event_id": "e1"}


def test_replay_moves_letters_back_to_pending(
    spool: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "replay", "--spool", str(spool), "--target", "crm")
    assert (code, out.strip()) == (0, "replayed 1 dead letters")
    code, out, _ = run(capsys, "replay", "--spool", str(spool))
    assert code == 0
    assert out.startswith("replayed 1 dead letters (1 invalid events skipped")
    file = SpoolFile(spool, targets=["app", "crm"], dedup_window=3600)
    file.open()
    try:
        assert file.depth == {"app": 1, "crm": 1}
        [(_, key, _, _, _, _, attempts)], _, _ = poll_pending(
            file.conn, target="app", now=2e9, held=[], room=10
        )
        assert (key, attempts) == ("e1", 0)
    finally:
        file.close()
    code, out, _ = run(capsys, "list", "--spool", str(spool), "--json")
    assert [letter["reason"] for letter in orjson.loads(out)] == ["missing_field"]


def test_purge_by_id_and_all(spool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first_id = orjson.loads(run(capsys, "list", "--spool", str(spool), "--json")[1])[0]["id"]
    assert run(capsys, "purge", "--spool", str(spool), "--id", str(first_id))[:2] == (
        0,
        "purged 1 dead letters\n",
    )
    assert run(capsys, "purge", "--spool", str(spool))[:2] == (0, "purged 2 dead letters\n")
    assert orjson.loads(run(capsys, "list", "--spool", str(spool), "--json")[1]) == []


def test_a_missing_spool_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "list", "--spool", str(tmp_path / "nope.db"))
    assert code == 1
    assert "no spool file" in err
    assert not (tmp_path / "nope.db").exists()  # not created by looking
