"""Instructions per request, counted by Valgrind's callgrind: a measure that steal time cannot move.

CPU seconds on a shared VM move by ±30% from run to run (the hypervisor steals
time and cache); instruction counts move by well under 1%. This script runs
`ark up` under ``valgrind --tool=callgrind`` (instrumentation off until the
gateway is warm), sends the same sequential requests with the master key and
with a virtual key that has a budget and rate limits (``run.VIRTUAL_KEY``),
and counts the gateway's instructions per request for each, background work
included (the ledger copies its journal into SQLite; the count waits for it).
It is a ratio test for the keys' cost and a regression measure between
versions; it says nothing of system-call or cache costs, which run.py's CPU
seconds include.

    python benchmarks/gateway_overhead/instructions.py --requests 400 --write-docs docs/benchmarks.md

Needs valgrind (``apt-get install valgrind``). About 3 minutes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import run  # the benchmark beside this file: its config, keys and helpers
from rich.console import Console
from rich.progress import Progress

HERE = Path(__file__).resolve().parent
KINDS = ("chat", "stream")
ALIAS = "gpt-4"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def send(port: int, key: str, kind: str, count: int) -> None:
    path, body = run.request_for(kind, ALIAS)
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        conn.request("POST", path, raw, headers)
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            sys.exit(f"{kind}: HTTP {response.status}: {payload[:300]!r}")
    conn.close()


def instructions(out_dir: Path, before: set[Path]) -> tuple[int, int]:
    """(event-loop thread, other threads) instructions in the dump callgrind_control -d just wrote.

    With --separate-threads=yes a dump is one file per thread, "callgrind.out.PID.N-TT"; thread 01 is
    the main thread, where the event loop serves requests; the others are asyncio.to_thread workers
    (the ledger's copy into the database, key reloads).
    """
    for _ in range(200):
        fresh = set(out_dir.glob("callgrind.out*")) - before
        counts: dict[int, int] = {}
        for path in fresh:
            match = re.search(r"-(\d+)$", path.name)
            total = re.search(r"^(?:summary|totals): (\d+)", path.read_text(errors="replace"), re.M)
            if match and total:
                counts[int(match.group(1))] = int(total.group(1))
        if 1 in counts:
            return counts[1], sum(n for thread, n in counts.items() if thread != 1)
        time.sleep(0.1)
    sys.exit("callgrind wrote no dump")


def measure(pid: int, port: int, key: str, kind: str, count: int, out_dir: Path) -> tuple[float, float]:
    send(port, key, kind, 20)  # warm this path
    time.sleep(1.0)  # let the ledger's copy of the warm-up pass
    callgrind(pid, "--zero")
    callgrind(pid, "--instr=on")
    send(port, key, kind, count)
    time.sleep(1.5)  # the ledger copies these rows into the database: that is part of their cost
    before = set(out_dir.glob("callgrind.out*"))
    callgrind(pid, "--dump")
    callgrind(pid, "--instr=off")
    loop, others = instructions(out_dir, before)
    return loop / count, others / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400, help="requests per arm and kind")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("bench-out/instructions.json"))
    ap.add_argument("--write-docs", type=Path)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed: apt-get install valgrind")
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="ark-instr-"))
    upstream_port, port = free_port(), free_port()
    config = work / "ark.toml"
    config.write_text(
        run.CONFIG_TOML.format(
            key=run.MASTER_KEY,
            port=port,
            upstream=f"http://127.0.0.1:{upstream_port}",
            alias=ALIAS,
            model=run.MODEL_ID,
            input_cost=run.INPUT_COST_PER_TOKEN,
            output_cost=run.OUTPUT_COST_PER_TOKEN,
        )
    )
    mock = run.spawn(
        [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(upstream_port), "--quiet"], work / "mock.log"
    )
    env_cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--separate-threads=yes",
        f"--callgrind-out-file={work}/callgrind.out.%p",
        sys.executable,
        "-m",
        "ark",
        "up",
        "--config",
        str(config),
        "--data-dir",
        str(work / "data"),
    ]
    gateway = run.spawn(env_cmd, work / "gateway.log")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {kind: {"master": [], "virtual": []} for kind in KINDS}
    try:
        run.wait_ready(mock, upstream_port, "/health", 30, work / "mock.log")
        console.print("starting ark up under valgrind (a minute or so)…")
        run.wait_ready(gateway, port, "/health/ready", 300, work / "gateway.log")
        status, _, raw = run.request(port, "POST", "/key/generate", run.VIRTUAL_KEY, run.MASTER_KEY)
        if status != 200:
            sys.exit(f"/key/generate: HTTP {status}: {raw[:300]!r}")
        keys = {"master": run.MASTER_KEY, "virtual": json.loads(raw)["key"]}
        steps = args.rounds * len(KINDS) * 2
        with Progress(console=console) as progress:
            task = progress.add_task("counting instructions", total=steps)
            for round_ in range(args.rounds):
                for kind in KINDS:
                    order = ("master", "virtual") if round_ % 2 == 0 else ("virtual", "master")
                    for arm in order:
                        loop, others = measure(gateway.pid, port, keys[arm], kind, args.requests, work)
                        results[kind][arm].append((loop, others))
                        progress.console.print(
                            f"{kind:7s} {arm:8s} {loop:12,.0f} instructions/request on the event loop, "
                            f"{others:10,.0f} in other threads"
                        )
                        progress.advance(task)
    finally:
        run.stop(gateway)
        run.stop(mock)
    summary = {}
    for kind, arms in results.items():
        master, virtual = min(arms["master"]), min(arms["virtual"])  # (loop, others) of the lowest loop count
        summary[kind] = {
            "master": master[0],
            "virtual": virtual[0],
            "ratio": virtual[0] / master[0],
            "master_threads": master[1],
            "virtual_threads": virtual[1],
            "runs": arms,
        }
    command = "python benchmarks/gateway_overhead/instructions.py " + " ".join(sys.argv[1:])
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": sys.version.split()[0],
        "valgrind": subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip(),
        "requests": args.requests,
        "rounds": args.rounds,
        "command": command,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary": summary}, indent=2))
    for kind, row in summary.items():
        console.print(
            f"{kind}: event loop: master {row['master']:,.0f}, virtual {row['virtual']:,.0f} instructions/request, "
            f"virtual/master {row['ratio']:.3f}; other threads: {row['master_threads']:,.0f} / "
            f"{row['virtual_threads']:,.0f}"
        )
    if args.write_docs:
        run.write_docs(args.write_docs, docs_section(meta, summary), BEGIN, "<!-- END gateway-instructions -->")
    shutil.rmtree(work, ignore_errors=True)


BEGIN = "<!-- BEGIN gateway-instructions: generated by benchmarks/gateway_overhead/instructions.py -->"


def docs_section(meta: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        "## Instructions per request (callgrind)",
        "",
        "CPU seconds on this VM move by ±30% between runs; instruction counts do not. The gateway runs under "
        "Valgrind's callgrind and gets the same sequential requests with the master key and with the virtual "
        "key of the section above. The event loop's count is the request path (auth, budgets, rate limits, "
        "the journal write, metrics, the access log); the other threads' count is mostly the ledger's copy "
        "into SQLite, whose fixed cost per batch weighs far more here than at full speed, since callgrind "
        "slows the gateway fifty-fold and a batch holds a quarter second of requests. System calls and cache "
        "misses are not in either: the CPU seconds above are the measure of record, this one the stable ratio.",
        "",
        f"Measured {meta['date']}, Python {meta['python']}, {meta['valgrind']}; {meta['requests']} requests "
        f"per arm, {meta['rounds']} rounds (the lowest count of each arm is shown). Produced by:",
        "",
        f"    {meta['command']}",
        "",
        "| scenario | event loop: master | virtual | virtual/master | target | | other threads: master | virtual |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for kind, row in summary.items():
        verdict = "PASS" if row["ratio"] <= 1.10 else "FAIL"
        lines.append(
            f"| {kind}:1 | {row['master']:,.0f} | {row['virtual']:,.0f} | {row['ratio']:.3f} | ≤ 1.10 | {verdict} "
            f"| {row['master_threads']:,.0f} | {row['virtual_threads']:,.0f} |"
        )
    lines.append("<!-- END gateway-instructions -->")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
