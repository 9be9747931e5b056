"""Load for the receiver benchmarks: signed bodies, wrk, and the helper servers.

`receiver_durable.py` (throughput and latency against a bare handler) and
`soak.py` (hours at a steady rate: disk and memory) share this. Bodies are signed
single events or Mailtrap batches with unique event ids, one per line of a file
(``signature<TAB>body``); wrk's Lua script cycles through its thread's share of
them, optionally paced with ``delay()``. The bare handler and the counting target
run as separate processes of this module (``python bench/loadgen.py --serve
bare|target --port N``), so the load generator, the receiver and the target each
have their own process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from mailtrap_receiver.auth import sign
from tests.helpers.processes import ReceiverProcess, http_status
from tests.helpers.webhooks import delivery_event

SECRET = b"bench-signing-secret"
PATH = "/webhooks/mailtrap"

LUA = r"""
local requests = {}
local counter = 0
local threads = {}
local pause = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(args[2])
  pause = tonumber(args[3])
  counter = tonumber(args[4])
  local index = 0
  for line in io.lines(args[1]) do
    if index % nthreads == tid then
      local tab = line:find("\t", 1, true)
      requests[#requests + 1] = wrk.format("POST", "__PATH__", {
        ["Content-Type"] = "application/json",
        ["Mailtrap-Signature"] = line:sub(1, tab - 1),
      }, line:sub(tab + 1))
    end
    index = index + 1
  end
end

function request()
  counter = counter + 1
  if counter > #requests then
    counter = 1
  end
  return requests[counter]
end

__DELAY__

function done(summary, latency, requests)
  io.write(string.format(
    "WRK_RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, " ..
    "\"p99_us\": %d, \"non2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""
DELAY = "function delay()\n  return pause\nend\n"


# --- the two helper servers, run as separate processes of this script -------------------


def _serve(kind: str, port: int) -> None:
    import uvloop
    from aiohttp import web

    forwarded = {"events": 0, "requests": 0, "first": 0.0, "last": 0.0}

    async def bare(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b'{"accepted": 1}', content_type="application/json")

    async def target(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        if not forwarded["requests"]:
            forwarded["first"] = now
        forwarded["last"] = now
        forwarded["requests"] += 1
        forwarded["events"] += body.count(b'"event_id"')
        return web.Response(text="ok")

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(forwarded)

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        if kind == "bare":
            app.router.add_post(PATH, bare)
        else:
            app.router.add_post("/events", target)
            app.router.add_get("/counts", counts)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def start_helper(kind: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    probe = f"http://127.0.0.1:{port}" + ("/counts" if kind == "target" else PATH)
    deadline = time.monotonic() + 30
    while http_status(probe, timeout=1.0) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the {kind} server did not start: {log.read_text()}")
        time.sleep(0.05)
    return process


# --- load ------------------------------------------------------------------------------


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is not installed; trying: apt-get install -y wrk", file=sys.stderr)
    for command in (
        ["apt-get", "install", "-y", "wrk"],
        ["sudo", "apt-get", "install", "-y", "wrk"],
    ):
        if shutil.which(command[0]):
            subprocess.run(command, check=False, capture_output=True)
            found = shutil.which("wrk")
            if found:
                return found
    sys.exit(
        "this benchmark needs wrk (https://github.com/wg/wrk): install the Debian/Ubuntu "
        "package with `apt-get install wrk`, or build it from source, and run again"
    )


def write_bodies(path: Path, *, count: int, batch: int) -> None:
    """``count`` signed bodies of ``batch`` events each, every event id unique."""
    now = int(time.time())
    with path.open("wb") as out:
        for _ in range(count):
            events = [delivery_event(timestamp=now, category="bench") for _ in range(batch)]
            body = orjson.dumps(events[0] if batch == 1 else {"events": events})
            out.write(sign(body, secret=SECRET).encode() + b"\t" + body + b"\n")


def run_wrk(
    wrk: str,
    *,
    url: str,
    bodies: Path,
    lua: Path,
    threads: int,
    connections: int,
    duration: float,
    rate: float | None = None,
    pause_ms: int = 0,
    skip: int = 0,
) -> dict[str, Any]:
    """Load ``url`` with ``bodies``, each thread starting ``skip`` bodies into its share;
    paced to about ``rate`` requests/s, or ``pause_ms`` between a connection's requests."""
    if rate is not None:
        pause_ms = max(1, round(connections * 1000 / rate))
    script = LUA.replace("__PATH__", PATH).replace("__DELAY__", DELAY if pause_ms else "")
    lua.write_text(script)
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
        "--",
        str(bodies),
        str(threads),
        str(pause_ms),
        str(skip),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"WRK_RESULT (\{.*\})", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["pause_ms"] = pause_ms
    return result


def counts(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        data: dict[str, Any] = json.loads(response.read())
        return data


def metric(admin_url: str, name: str) -> float:
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def describe(label: str, result: dict[str, Any], batch: int) -> str:
    line = (
        f"{label:<42} {result['rps']:>9.0f} req/s   p50 {result['p50_us'] / 1000:6.2f} ms   "
        f"p99 {result['p99_us'] / 1000:7.2f} ms"
    )
    if batch > 1:
        line += f"   {result['rps'] * batch:>9.0f} events/s"
    if result["non2xx"] or result["socket_errors"]:
        line += f"   (non-2xx {result['non2xx']}, socket errors {result['socket_errors']})"
    return line


def accepted_events(receiver: ReceiverProcess) -> float:
    """Events the receiver took as new so far."""
    return metric(receiver.admin_url, "mailtrap_webhook_events_received_total") - metric(
        receiver.admin_url, "mailtrap_webhook_duplicates_total"
    )


def settle(receiver: ReceiverProcess, target_counts: str) -> float:
    """Wait until all the receiver accepted is forwarded and it accepts no more: the
    total accepted. Requests whose client wrk already dropped may still be committing
    (events_received_total counts them once stored), so one read is not the last."""
    accepted = accepted_events(receiver)
    while True:
        wait_forwarded(target_counts, accepted)
        time.sleep(0.5)  # a quiet spell: such a commit takes milliseconds
        latest = accepted_events(receiver)
        if latest == accepted:
            return accepted
        accepted = latest


def wait_forwarded(target_counts: str, accepted: float, *, within: float = 300) -> float:
    """Wait until the target has ``accepted`` events; the seconds it took."""
    started = time.monotonic()
    while counts(target_counts)["events"] < accepted:
        if time.monotonic() - started > within:
            raise RuntimeError(f"the target did not get all {accepted:.0f} events in {within}s")
        time.sleep(0.05)
    return time.monotonic() - started


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a helper server of the benchmarks")
    parser.add_argument("--serve", choices=["bare", "target"], required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    _serve(args.serve, args.port)
