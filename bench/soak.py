"""Hours at a steady rate: does the receiver's disk and memory stay flat?

A receiver in ack mode ``durable`` (``python -m mailtrap_receiver serve``) with a
healthy loopback target (batchSize 100) takes single-event signed requests from
``wrk`` at a steady rate, half of its measured maximum by default, for
``--minutes`` (30 by default). The run is cut into back-to-back segments of
``--sample`` seconds (10): each segment is one paced wrk run over bodies of its own
(unique event ids across the whole run, written while the previous segment runs), and
after each one the script samples

- the store's bytes on disk (the spool's database, ``-wal`` and ``-shm`` files),
- the RSS of every receiver process (the server and its spool writer),
- the backlog (``mailtrap_webhook_queue_depth``), the segment's p99 and its non-2xx.

At the end it waits until the target has every accepted event, prints every sample
and the slope of each series over the last two thirds of the run (least squares,
per 10 minutes), and rewrites this store's section of ``bench/RESULTS.md``
(``--no-results`` to leave it alone). The first third is warm-up: caches fill,
the dedup window starts to hold keys.

    .venv/bin/python bench/soak.py                     # 30 minutes, local store
    .venv/bin/python bench/soak.py --minutes 3 --rate 1500
"""

from __future__ import annotations

import argparse
import hmac
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import (
    PATH,
    SECRET,
    accepted_events,
    counts,
    ensure_wrk,
    metric,
    run_wrk,
    start_helper,
    wait_forwarded,
)
from tests.helpers.processes import ReceiverProcess, free_port, start_receiver, write_config

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
CONNECTIONS = 32
MIB = 1024 * 1024


def write_segment(path: Path, *, first: int, count: int, token: str) -> None:
    """``count`` signed single-event bodies with event ids ``first``.. of this run.

    Built from a byte template rather than through a JSON encoder: a 30-minute run
    needs millions of them, written while wrk runs on the same two cores.
    """
    now = int(time.time())
    lines = []
    for number in range(first, first + count):
        ident = f"{token}-{number:012d}"
        body = (
            b'{"event":"delivery","timestamp":%d,"message_id":"m-%s","email":'
            b'"soak@example.com","event_id":"e-%s","sending_stream":"transactional",'
            b'"category":"soak"}' % (now, ident.encode(), ident.encode())
        )
        signature = hmac.digest(SECRET, body, "sha256").hex().encode()
        lines.append(signature + b"\t" + body + b"\n")
    path.write_bytes(b"".join(lines))


def tree_rss(pid: int) -> dict[int, int]:
    """RSS in bytes of ``pid`` and every descendant, by pid."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {pid}, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    rss = {}
    for member in tree:
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            rss[member] = int(match.group(1)) * 1024
    return rss


def store_bytes(spool: Path) -> dict[str, int]:
    """Bytes of the spool's files on disk: database, WAL, shared memory."""
    sizes = {}
    for name, suffix in (("db", ""), ("wal", "-wal"), ("shm", "-shm")):
        file = spool.with_name(spool.name + suffix)
        sizes[name] = file.stat().st_size if file.exists() else 0
    return sizes


@dataclass
class Sample:
    minute: float
    db: int
    wal: int
    shm: int
    rss: int  # all receiver processes
    backlog: float
    rps: float
    p99_ms: float
    non2xx: int

    @property
    def store(self) -> int:
        return self.db + self.wal + self.shm


def slope_per_10min(samples: list[Sample], field: str) -> float:
    """Least-squares slope of ``field`` over the samples, per 10 minutes."""
    xs = [s.minute for s in samples]
    ys = [float(getattr(s, field)) for s in samples]
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return 10 * sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def row(sample: Sample) -> str:
    return (
        f"{sample.minute:6.1f} {sample.db / MIB:9.1f} {sample.wal / MIB:9.1f} "
        f"{sample.shm / MIB:7.1f} {sample.store / MIB:9.1f} {sample.rss / MIB:8.1f} "
        f"{sample.backlog:8.0f} {sample.rps:8.0f} {sample.p99_ms:8.2f} {sample.non2xx:7d}"
    )


HEADER = "   min   db MiB   wal MiB shm MiB store MiB  rss MiB  backlog    req/s  p99 ms  non2xx"


def measure_max(wrk: str, receiver: ReceiverProcess, work: Path, token: str) -> float:
    bodies = work / "max.tsv"
    write_segment(bodies, first=0, count=150_000, token=token + "max")
    result = run_wrk(
        wrk,
        url=receiver.url(PATH),
        bodies=bodies,
        lua=work / "max.lua",
        threads=1,
        connections=CONNECTIONS,
        duration=10,
    )
    return float(result["rps"])


def run(args: argparse.Namespace) -> tuple[list[Sample], dict[str, Any]]:
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="receiver-soak-"))
    spool = work / "spool" / "spool.db"
    (work / "secret.txt").write_bytes(SECRET)
    token = os.urandom(4).hex()
    helpers: list[subprocess.Popen[bytes]] = []
    receiver: ReceiverProcess | None = None
    samples: list[Sample] = []
    summary: dict[str, Any] = {"work": work}
    try:
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
                        "name": "soak",
                        "url": f"http://127.0.0.1:{target_port}/events",
                        "batchSize": 100,
                    }
                ],
                "delivery": {"ack": "durable", "spoolPath": str(spool)},
            },
        )
        receiver = start_receiver(config=config, log_path=work / "receiver.log")
        if args.rate:
            rate = float(args.rate)
        else:
            top = measure_max(wrk, receiver, work, token)
            wait_forwarded(target_counts, accepted_events(receiver))
            rate = top / 2
            summary["max_rps"] = top
            print(f"measured maximum {top:.0f} req/s; soaking at {rate:.0f} req/s", flush=True)
        summary["rate"] = rate
        # A connection's cycle is its pause plus the request's latency; at half load
        # the latency is a few milliseconds, so the pause is the cycle less 2 ms.
        pause_ms = max(1, round(CONNECTIONS * 1000 / rate) - 2)
        per_segment = int(rate * args.sample * 1.5) + 1000
        segments = max(1, round(args.minutes * 60 / args.sample))
        files = [work / "a.tsv", work / "b.tsv"]
        write_segment(files[0], first=0, count=per_segment, token=token)
        started = time.monotonic()
        print(HEADER, flush=True)
        for number in range(segments):
            current = files[number % 2]
            following = files[(number + 1) % 2]
            writer = threading.Thread(
                target=write_segment,
                kwargs={
                    "path": following,
                    "first": (number + 1) * per_segment,
                    "count": per_segment,
                    "token": token,
                },
            )
            writer.start()
            result = run_wrk(
                wrk,
                url=receiver.url(PATH),
                bodies=current,
                lua=work / "soak.lua",
                threads=1,
                connections=CONNECTIONS,
                duration=args.sample,
                pause_ms=pause_ms,
            )
            writer.join()
            if receiver.process.poll() is not None:
                raise RuntimeError(f"the receiver exited:\n{receiver.log()[-3000:]}")
            sizes = store_bytes(spool)
            sample = Sample(
                minute=(time.monotonic() - started) / 60,
                db=sizes["db"],
                wal=sizes["wal"],
                shm=sizes["shm"],
                rss=sum(tree_rss(receiver.process.pid).values()),
                backlog=metric(receiver.admin_url, "mailtrap_webhook_queue_depth"),
                rps=result["rps"],
                p99_ms=result["p99_us"] / 1000,
                non2xx=result["non2xx"] + result["socket_errors"],
            )
            samples.append(sample)
            print(row(sample), flush=True)
        accepted = accepted_events(receiver)
        summary["drain_s"] = wait_forwarded(target_counts, accepted, within=600)
        summary["accepted"] = accepted
        summary["forwarded"] = counts(target_counts)["events"]
        summary["processes"] = len(tree_rss(receiver.process.pid))
    finally:
        if receiver is not None:
            receiver.terminate()
        for helper in helpers:
            helper.terminate()
            helper.wait(timeout=10)
    return samples, summary


def report(args: argparse.Namespace, samples: list[Sample], summary: dict[str, Any]) -> str:
    steady = samples[len(samples) // 3 :]
    lines = [
        f"{len(samples)} samples of {args.sample:g} s at {summary['rate']:.0f} req/s"
        + (f" (half of the measured {summary['max_rps']:.0f})" if "max_rps" in summary else ""),
        f"requests: median {median(s.rps for s in samples):.0f} req/s, "
        f"non-2xx {sum(s.non2xx for s in samples)}, "
        f"worst p99 {max(s.p99_ms for s in samples):.2f} ms",
        f"events: {summary['accepted']:.0f} accepted, {summary['forwarded']} forwarded "
        f"(backlog drained {summary['drain_s']:.1f} s after the load)",
        "slopes over the last two thirds, per 10 minutes:",
    ]
    for field, unit, scale in (
        ("db", "MiB", MIB),
        ("wal", "MiB", MIB),
        ("store", "MiB", MIB),
        ("rss", "MiB", MIB),
        ("backlog", "events", 1),
    ):
        lines.append(f"  {field:8} {slope_per_10min(steady, field) / scale:+10.2f} {unit}")
    lines.append(
        f"  max over the run: store {max(s.store for s in samples) / MIB:.1f} MiB, "
        f"wal {max(s.wal for s in samples) / MIB:.1f} MiB, "
        f"rss {max(s.rss for s in samples) / MIB:.1f} MiB"
    )
    return "\n".join(lines)


def write_results(store: str, command: str, table: str, text: str) -> None:
    begin, end = f"<!-- soak:{store} -->", f"<!-- /soak:{store} -->"
    section = (
        f"{begin}\n### Soak, {store} store (`soak.py`)\n\n```sh\n{command}\n```\n\n"
        f"```\n{table}\n\n{text}\n```\n{end}"
    )
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + section + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(current)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds per sample")
    parser.add_argument("--rate", type=float, default=0.0, help="req/s (default: half of max)")
    parser.add_argument("--store", choices=["local"], default="local")
    parser.add_argument("--no-results", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args()
    samples, summary = run(args)
    text = report(args, samples, summary)
    print()
    print(text)
    print(f"(receiver log and spool in {summary['work']})")
    if not args.no_results:
        every = max(1, round(60 / args.sample))  # one row a minute in the file
        table = "\n".join([HEADER, *(row(s) for s in samples[every - 1 :: every])])
        command = " ".join([".venv/bin/python", "bench/soak.py", *sys.argv[1:]])
        write_results(args.store, command, table, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
