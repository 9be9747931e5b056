"""``mailtrap-operator mailtrap list|delete`` against the fake Mailtrap as a process,
and the operator's setting for Mailtrap's API base URL."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from mailtrap_operator.settings import build_parser, parse
from tests.helpers.canary import canary, leaks
from tests.helpers.fake_mailtrap import FakeMailtrapProcess, running_fake_mailtrap

ACCOUNT = 26730
COMMAND = str(Path(sys.executable).parent / "mailtrap-operator")


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(canary("cli-api-token") + "\n")
    return path


@pytest.fixture(scope="module")
def fake(
    tmp_path_factory: pytest.TempPathFactory, token_file: Path
) -> Iterator[FakeMailtrapProcess]:
    with running_fake_mailtrap(
        account_id=ACCOUNT,
        token_file=token_file,
        log_path=tmp_path_factory.mktemp("fake") / "fake.log",
    ) as process:
        yield process


def _create(fake: FakeMailtrapProcess, token_file: Path, **fields: Any) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{fake.url}/api/accounts/{ACCOUNT}/webhooks",
        data=orjson.dumps({"webhook": fields}),
        method="POST",
        headers={
            "Authorization": f"Bearer {token_file.read_text().strip()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        data: dict[str, Any] = orjson.loads(response.read())["data"]
        return data


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMMAND, "mailtrap", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def _account(fake: FakeMailtrapProcess, token_file: Path) -> list[str]:
    return ["--account-id", str(ACCOUNT), "--token-file", str(token_file), "--api-url", fake.url]


def test_list_shows_every_webhook_without_secrets(
    fake: FakeMailtrapProcess, token_file: Path
) -> None:
    sending = _create(
        fake, token_file, url="https://hooks.example.com/webhooks/mailtrap",
        webhook_type="email_sending", sending_stream="transactional",
        event_types=["delivery", "soft_bounce"],
    )  # fmt: skip
    audit = _create(
        fake, token_file, url="https://hooks.example.com/audit", webhook_type="audit_log"
    )
    table = _run("list", *_account(fake, token_file))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "TYPE", "ACTIVE", "FORMAT", "STREAM", "EVENTS", "URL"]
    ours = (str(sending["id"]), str(audit["id"]))
    assert [line.split() for line in lines[1:] if line.split()[0] in ours] == [
        [str(sending["id"]), "email_sending", "true", "json", "transactional",
         "delivery,soft_bounce", "https://hooks.example.com/webhooks/mailtrap"],
        [str(audit["id"]), "audit_log", "true", "json", "-", "-", "https://hooks.example.com/audit"],
    ]  # fmt: skip
    listed = _run("list", *_account(fake, token_file), "-o", "json")
    assert listed.returncode == 0, listed.stderr
    as_json = {item["id"]: item for item in json.loads(listed.stdout)}
    assert as_json[sending["id"]] == {k: v for k, v in sending.items() if k != "signing_secret"}
    for hook in fake.control("GET", "state")["webhooks"]:
        assert hook["signing_secret"] not in listed.stdout + table.stdout
    assert leaks(listed.stdout + listed.stderr + table.stdout + table.stderr) == []


def test_delete_removes_an_orphan_and_says_what_it_was(
    fake: FakeMailtrapProcess, token_file: Path
) -> None:
    orphan = _create(fake, token_file, url="https://gone.example.com/x", webhook_type="audit_log")
    other = _create(fake, token_file, url="https://gone.example.com/y", webhook_type="audit_log")
    done = _run("delete", str(orphan["id"]), *_account(fake, token_file))
    assert (done.returncode, done.stdout.strip()) == (
        0, f"deleted webhook {orphan['id']} (audit_log, https://gone.example.com/x)",
    )  # fmt: skip
    # The base URL from the environment, and the deleted webhook as JSON.
    done = _run(
        "delete", str(other["id"]), "--account-id", str(ACCOUNT), "--token-file", str(token_file),
        "-o", "json", env={"MAILTRAP_API_URL": fake.url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == other["id"]
    left = {hook["id"] for hook in fake.control("GET", "state")["webhooks"]}
    assert {orphan["id"], other["id"]} & left == set()
    again = _run("delete", str(orphan["id"]), *_account(fake, token_file))
    assert again.returncode == 1
    assert "Not Found (HTTP 404)" in again.stderr


def test_a_401_exits_1_with_mailtraps_message(fake: FakeMailtrapProcess, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text(canary("cli-wrong-token"))
    done = _run(
        "list", "--account-id", str(ACCOUNT), "--token-file", str(wrong), "--api-url", fake.url
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip() == "mailtrap-operator mailtrap list: Incorrect API token (HTTP 401)"
    assert leaks(done.stdout + done.stderr) == []


def test_unusable_input_says_so(
    fake: FakeMailtrapProcess, token_file: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    done = _run(
        "list", "--account-id", str(ACCOUNT), "--token-file", str(empty), "--api-url", fake.url
    )
    assert (done.returncode, "holds no token" in done.stderr) == (1, True)
    usage = _run("list", "--account-id", "acme", "--token-file", str(token_file))
    assert usage.returncode == 2
    assert "'acme' is not an account id" in usage.stderr
    usage = _run(
        "list", "--account-id", "1", "--token-file", str(token_file), "--api-url", "ftp://x"
    )
    assert (usage.returncode, "not an http(s) URL" in usage.stderr) == (2, True)
    nowhere = _run(
        "list",
        "--account-id",
        "1",
        "--token-file",
        str(token_file),
        "--api-url",
        "http://127.0.0.1:9",
    )
    assert nowhere.returncode == 1
    assert "Cannot connect" in nowhere.stderr


# --- the operator's setting --------------------------------------------------------------


def test_the_api_url_setting_flag_then_variables_then_mailtrap() -> None:
    assert parse([], environ={}).mailtrap_api_url == "https://mailtrap.io"
    shared = {"MAILTRAP_API_URL": "http://127.0.0.1:8025/"}
    assert parse([], environ=shared).mailtrap_api_url == "http://127.0.0.1:8025"
    both = {**shared, "MAILTRAP_OPERATOR_MAILTRAP_API_URL": "https://proxy.internal/mailtrap"}
    assert parse([], environ=both).mailtrap_api_url == "https://proxy.internal/mailtrap"
    flagged = parse(["--mailtrap-api-url", "https://mailtrap.io/"], environ=both)
    assert flagged.mailtrap_api_url == "https://mailtrap.io"
    assert "mailtrap-operator mailtrap" in build_parser(environ={}).format_help()


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["--mailtrap-api-url", "mailtrap.io"], {}), ([], {"MAILTRAP_API_URL": "ftp://mailtrap.io"})],
)
def test_a_bad_api_url_is_a_usage_error(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse(argv, environ=env)
    assert raised.value.code == 2
