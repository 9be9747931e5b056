"""Requests per second and ack latency of the receiver in ack mode ``durable``,
against a bare aiohttp handler measured in the same run on the same machine.

Three processes besides this one, each started here: (a) a bare aiohttp server
whose handler only reads the body (uvloop, no access log, the receiver's backlog),
(b) the real receiver (``python -m mailtrap_receiver serve``, ack mode ``durable``,
its spool in a temporary directory, JSON logs at info to a file) and (c) a fast
loopback target in its own process that counts the events forwarded to it, so
delivery is on while the receiver is measured. The load generator is ``wrk`` (the
Debian package; this script tries ``apt-get install -y wrk`` when it is missing)
with a Lua script that cycles through pre-generated, signed bodies with unique event
ids (each wrk thread its own share, so no event repeats within a run unless the run
outlasts them: the script says so).

Phases, each ``--duration`` seconds with the same connections and threads:

1. ``--rounds`` times (3 by default; medians are reported, since a shared 2-core
   machine is noisy): the bare handler at full speed, then the receiver at full
   speed, then a wait until the target has every accepted event (so the next bare
   phase runs beside an idle receiver);
2. the receiver at half of its median full-speed rate: each wrk connection waits
   between its requests (wrk's Lua ``delay()``), which paces the total rate. The
   pause is ``connections / rate`` less the median latency a 2-second paced probe
   measured (a connection's cycle is pause plus latency); the rate reached is
   printed.

``--batch N`` sends N events per request (Mailtrap's ``{"events": [...]}``) and
also prints events per second accepted; the target's ``batchSize`` is
``--target-batch-size`` (100 by default) either way. Forwarding is printed as the
events per second the target received while the receiver ran at full speed, and
while the receiver emptied its backlog afterwards.

    .venv/bin/python bench/receiver_durable.py                # single events
    .venv/bin/python bench/receiver_durable.py --batch 100    # 100-event requests
    .venv/bin/python bench/receiver_durable.py --duration 2   # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from mailtrap_receiver.auth import sign
from tests.helpers.processes import (
    ReceiverProcess,
    free_port,
    http_status,
    start_receiver,
    write_config,
)
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


def _start_helper(kind: str, port: int, log: Path) -> subprocess.Popen[bytes]:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="bare/receiver pairs (median)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--batch", type=int, default=1, help="events per request")
    parser.add_argument("--target-batch-size", type=int, default=100)
    parser.add_argument("--bodies", type=int, default=0, help="bodies to generate (auto)")
    parser.add_argument("--serve", choices=["bare", "target"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.port)
        return 0

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="receiver-bench-"))
    bodies = work / "bodies.tsv"
    # Enough unique events for every receiver phase at a generous rate (bodies of
    # the bare phases may repeat: it does not look at them).
    generous_rps = 12_000 if args.batch == 1 else 60_000 / args.batch
    phases = args.rounds + 0.5
    count = args.bodies or max(1000, int(generous_rps * args.duration * phases))
    started = time.monotonic()
    write_bodies(bodies, count=count, batch=args.batch)
    print(
        f"generated {count} signed bodies of {args.batch} event(s) in "
        f"{time.monotonic() - started:.1f}s; wrk -t{args.threads} -c{args.connections}, "
        f"{args.duration:g}s per phase, {args.rounds} rounds, {os.cpu_count()} CPUs"
    )
    (work / "secret.txt").write_bytes(SECRET)
    load = {
        "bodies": bodies,
        "lua": work / "load.lua",
        "threads": args.threads,
        "connections": args.connections,
        "duration": args.duration,
    }

    helpers: list[subprocess.Popen[bytes]] = []
    receiver = None
    bare: list[dict[str, Any]] = []
    full: list[dict[str, Any]] = []
    during: list[float] = []  # events/s the target got while the receiver was at max
    drains: list[float] = []  # events/s the target got from the end of a phase to empty
    try:
        bare_port = free_port()
        helpers.append(_start_helper("bare", bare_port, work / "bare.log"))
        target_port = free_port()
        helpers.append(_start_helper("target", target_port, work / "target.log"))
        target_counts = f"http://127.0.0.1:{target_port}/counts"
        config = write_config(
            work / "receiver.json",
            {
                "path": PATH,
                "signingSecretFile": "secret.txt",
                "targets": [
                    {
                        "name": "bench",
                        "url": f"http://127.0.0.1:{target_port}/events",
                        "batchSize": args.target_batch_size,
                    }
                ],
                "delivery": {"ack": "durable", "spoolPath": str(work / "spool" / "spool.db")},
                "maxBodySize": "64Mi",
            },
        )
        receiver = start_receiver(config=config, log_path=work / "receiver.log")
        skip = 0
        for _ in range(args.rounds):
            # The receiver is idle here (its backlog delivered), so the two phases of a
            # round see the same machine.
            bare.append(run_wrk(wrk, url=f"http://127.0.0.1:{bare_port}{PATH}", **load))
            before = counts(target_counts)["events"]
            result = run_wrk(wrk, url=receiver.url(PATH), skip=skip, **load)
            skip += result["requests"] // args.threads + 1
            got = counts(target_counts)["events"]
            during.append((got - before) / (result["duration_us"] / 1e6))
            accepted = accepted_events(receiver)
            backlog = accepted - got
            took = wait_forwarded(target_counts, accepted)
            if backlog > 1000 and took > 0:
                drains.append(backlog / took)
            full.append(result)
        max_rps = median([result["rps"] for result in full])
        half_rate = max_rps / 2
        # A connection's cycle is its pause plus the request's latency: a short paced
        # run measures the latency, and the real one pauses that much less.
        probe = run_wrk(
            wrk, url=receiver.url(PATH), rate=half_rate, skip=skip, **{**load, "duration": 2}
        )
        skip += probe["requests"] // args.threads + 1
        nominal_ms = args.connections * 1000 / half_rate
        pause_ms = max(round(nominal_ms / 2), round(nominal_ms - probe["p50_us"] / 1000), 1)
        half = run_wrk(wrk, url=receiver.url(PATH), pause_ms=pause_ms, skip=skip, **load)
        skip += half["requests"] // args.threads + 1
        total_accepted = settle(receiver, target_counts)
        forwarded = counts(target_counts)
        wrapped = skip > count // args.threads
    finally:
        if receiver is not None:
            receiver.terminate()
        for helper in helpers:
            helper.terminate()
            helper.wait(timeout=10)

    print()
    for number, (bare_result, full_result) in enumerate(zip(bare, full, strict=True), 1):
        print(describe(f"round {number}: bare aiohttp (reads the body)", bare_result, args.batch))
        print(describe(f"round {number}: receiver, durable, max", full_result, args.batch))
    print(describe(f"receiver, durable, at ~{half_rate:.0f} req/s", half, args.batch))
    bare_rps = median([result["rps"] for result in bare])
    print()
    print(f"median bare:     {bare_rps:9.0f} req/s")
    print(
        f"median receiver: {max_rps:9.0f} req/s   p50 "
        f"{median([r['p50_us'] for r in full]) / 1000:.2f} ms   p99 "
        f"{median([r['p99_us'] for r in full]) / 1000:.2f} ms"
    )
    print(f"ratio receiver/bare (req/s, medians): {max_rps / bare_rps:.2f}")
    print(
        f"half load: {half['rps']:.0f} req/s reached, p50 {half['p50_us'] / 1000:.2f} ms, "
        f"p99 {half['p99_us'] / 1000:.2f} ms (each of {args.connections} connections paced by "
        f"wrk's delay(): {half['pause_ms']} ms between its requests)"
    )
    if args.batch > 1:
        print(f"accepted events/s at max (median): {max_rps * args.batch:.0f}")
    print(
        f"delivery: ON, to a loopback target in its own process (batchSize "
        f"{args.target_batch_size}); forwarded while the receiver was at max: "
        f"{median(during):.0f} events/s (median)"
        + (f"; draining the backlog after: {median(drains):.0f} events/s" if drains else "")
    )
    print(
        f"forwarded {forwarded['events']} of {total_accepted:.0f} accepted events in "
        f"{forwarded['requests']} requests (duplicates: "
        f"{max(0, forwarded['events'] - int(total_accepted))})"
    )
    if wrapped:
        print(f"note: the run outlasted the {count} bodies, so some events repeated (--bodies)")
    print(f"(receiver log and spool in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
