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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    PATH,
    SECRET,
    accepted_events,
    counts,
    describe,
    ensure_wrk,
    run_wrk,
    settle,
    start_helper,
    wait_forwarded,
    write_bodies,
)
from tests.helpers.processes import free_port, start_receiver, write_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=3, help="bare/receiver pairs (median)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--batch", type=int, default=1, help="events per request")
    parser.add_argument("--target-batch-size", type=int, default=100)
    parser.add_argument("--bodies", type=int, default=0, help="bodies to generate (auto)")
    args = parser.parse_args()

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
        helpers.append(start_helper("bare", bare_port, work / "bare.log"))
        target_port = free_port()
        helpers.append(start_helper("target", target_port, work / "target.log"))
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
