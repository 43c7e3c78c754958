"""Gateway overhead benchmark: the same load sent directly to a mock upstream
(arm A, "direct") and through the ARK gateway in front of it (arm B,
"gateway"), interleaved, plus the gateway's idle memory and start-up time;
then the same gateway process with the master key (arm A, "master") against a
virtual key with a budget and rate limits (arm B, "virtual"), interleaved too;
and, with --ollama-scenarios, the same gateway behind an Ollama-shaped engine
asked through its OpenAI API (arm A, "openai") and through its Ollama API
(arm B, "ollama"), interleaved.

One command does everything (run from the repository root):

    python benchmarks/gateway_overhead/run.py --rounds 3 --duration 10 --write-docs docs/benchmarks.md

It starts mock_upstream.py, measures start-to-ready of the gateway command
--start-runs times, starts the gateway once more for the load runs, checks
both arms return correct bodies (preflight), measures idle RSS, and then for
each scenario runs loadgen.py against A and B in turn for --rounds rounds
(order A B, then B A, ... so linear drift cancels). With --keys-compare (the
default) it then creates a virtual key through /key/generate and runs the
--keys-scenarios the same way, master key against virtual key; then the
--ollama-scenarios, OpenAI API against Ollama API. Results: tables
on stdout, a JSON file (--json) and, with --write-docs, generated sections in a
markdown file.

Layout on a machine with 2+ CPUs: the gateway runs alone on CPU 1, the mock
upstream, the load generator and this script on CPU 0 (--gateway-cpus,
--client-cpus; --no-pin to switch off).

Any other gateway can be measured with --gateway-cmd; its arguments may use
{python} {config} {data_dir} {upstream} {port}. The config file (ARK's format)
is always written.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

try:
    import psutil
    from rich.console import Console
    from rich.table import Table
except ImportError:  # pragma: no cover
    sys.exit("run.py needs psutil and rich: pip install psutil rich httptools")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from mock_upstream import COMPLETION_TEXT, MODEL_ID, OLLAMA_MODEL_ID, stream_tokens  # noqa: E402

from docs_section import write_docs  # noqa: E402

MASTER_KEY = "sk-bench-0123456789abcdefghijklmnopqrstuv"
PROMPT = "Say hello in one short sentence."
EMBED_DIM = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEFAULT_SCENARIOS = "chat:1,chat:32,stream:1,stream:32,embed:1"
DEFAULT_GATEWAY_CMD = "{python} -m ark up --config {config} --data-dir {data_dir}"

CONFIG_TOML = """\
master_key = "{key}"
[gateway]
listen = "127.0.0.1:{port}"
[engines.mock]
kind = "openai"
url = "{upstream}/v1"
api_key = "sk-upstream-unused"
[aliases]
"{alias}" = "{model}"
[models."{model}"]
input_cost_per_token = {input_cost:f}
output_cost_per_token = {output_cost:f}
"""
# Appended to CONFIG_TOML for --ollama-scenarios: the same mock, through its Ollama API (not GPU-managed: the
# comparison is of the two client APIs, and both arms take the same lease).
OLLAMA_CONFIG_TOML = """\
[engines.ollama]
kind = "ollama"
url = "{upstream}"
gpu_managed = "no"
[models."{ollama_model}"]
engine = "ollama"
input_cost_per_token = {input_cost:f}
output_cost_per_token = {output_cost:f}
"""
# Prices in the config, so that requests on a virtual key with a budget really compute their cost.
INPUT_COST_PER_TOKEN = 0.000001
OUTPUT_COST_PER_TOKEN = 0.000002

# Targets for the ARK gateway (CPU per stream assumes --chunks 20).
TARGET_CPU_MS = {"chat": 0.5, "embed": 0.5, "stream": 1.5}
TARGET_ADDED_MS = 1.0
TARGET_IDLE_RSS_MB = 100.0
TARGET_START_S = 1.5

# LiteLLM 1.108.7 proxy (uvicorn, 1 worker) measured on this 2-core machine with
# the same layout, quoted for scale from the shared bench results
# litellm-1.108.7_pinned.json (load) and litellm-1.108.7_cold-start.json (start, RSS).
LITELLM_SOURCE = (
    "LiteLLM 1.108.7 proxy on the same 2-core machine and layout, from the shared bench results "
    "litellm-1.108.7_pinned.json and litellm-1.108.7_cold-start.json"
)
DECIMALS = {"ms": 3, "MB": 1, "s": 2}
LITELLM_CPU_MS = {"chat:1": 16.8, "chat:32": 13.95, "stream:1": 29.2, "stream:32": 33.2}
LITELLM_ADDED_P50_MS = {"chat:1": 16.6, "stream:1": 28.2}
LITELLM_ADDED_TTFT_MS = {"stream:1": 12.1}
LITELLM_IDLE_RSS_MB = 333.5
LITELLM_START_S = 7.6

# Virtual key vs master key: the same gateway process, a key whose budget and limits are never reached,
# so every request goes through the budget reservation, the rate-limit buckets and the parallel count.
DEFAULT_KEY_SCENARIOS = "chat:1,chat:32,stream:1"
VIRTUAL_KEY = {
    "key_alias": "bench",
    "max_budget": 1_000_000_000,
    "budget_duration": "30d",
    "rpm_limit": 100_000_000,
    "tpm_limit": 2_000_000_000,  # the column holds 2^31 - 1 at most
    "max_parallel_requests": 100_000,
}
TARGET_KEY_CPU_RATIO = 1.10  # virtual / master gateway CPU per request, at most
TARGET_KEY_ADDED_MS = 1.0  # virtual - master p50 latency, below

# Ollama API vs OpenAI API: the same gateway, the same Ollama-shaped engine (the mock's /api/chat, /api/embed).
DEFAULT_OLLAMA_SCENARIOS = "chat:1,stream:1,embed:1"  # what --ollama-scenarios is meant for (off by default)
TARGET_OLLAMA_CPU_RATIO = 1.10  # Ollama API / OpenAI API gateway CPU per request, at most


# --------------------------------------------------------------------------- arms


@dataclass(frozen=True, slots=True)
class Arm:
    """Where one arm sends its load: port, Bearer key (None: no header), model name."""

    name: str  # direct, gateway, master, virtual, openai, ollama
    port: int
    key: str | None
    model: str
    via_gateway: bool  # the gateway serves it, so its CPU per request is meaningful
    api: str = "openai"  # what the client sends: "openai" (/v1/...) or "ollama" (/api/...)
    upstream: str = "openai"  # which of the mock's APIs answers it (for its request counters)


# --------------------------------------------------------------------------- processes


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        # own process group (for stop) but the same session, so the same scheduler autogroup as us
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, process_group=0)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we started, SIGKILL after 10 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def set_nice(value: int) -> None:
    """Nice this process (children inherit it). Where the kernel groups processes by session
    (sched_autogroup), nice only ranks within the group, so nice the group too."""
    os.setpriority(os.PRIO_PROCESS, 0, value)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(value))


def tree(pid: int) -> list[int]:
    try:
        return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_s(pid: int) -> float:
    """utime+stime (+ reaped children's) of a process tree, from /proc/<pid>/stat."""
    ticks = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def rss_split_mb(pid: int) -> tuple[float, float]:
    """(ARK's own, the services it supervises) RSS in MB: the gateway process and its engine workers, apart
    from Prometheus, node_exporter, Alertmanager... that `ark up` runs beside it when they are installed."""
    own = services = 0
    for p in tree(pid):
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(p)
            rss = process.memory_info().rss
            if p == pid or any("ark.engines" in part for part in process.cmdline()):
                own += rss
            else:
                services += rss
    return round(own / 2**20, 1), round(services / 2**20, 1)


def machine_cpu_s() -> tuple[float, float]:
    """(user+nice+system, steal) seconds summed over all CPUs, from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (vals[0] + vals[1] + vals[2]) / CLK_TCK, vals[7] / CLK_TCK


# --------------------------------------------------------------------------- HTTP


def request(
    port: int, method: str, path: str, body: dict[str, Any] | None = None, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_ready(proc: subprocess.Popen[bytes], port: int, path: str, timeout: float, log: Path) -> float:
    """Seconds from now until GET path returns 200 (polled every 10 ms)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"process exited with {proc.returncode} before ready; log {log}:\n{tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if request(port, "GET", path)[0] == 200:
                return time.perf_counter() - t0
        time.sleep(0.01)
    sys.exit(f"not ready on :{port}{path} within {timeout}s; log {log}:\n{tail(log)}")


def tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


# --------------------------------------------------------------------------- scenarios


EMBED_INPUT = "The quick brown fox jumps over the lazy dog."


def request_for(kind: str, model: str, api: str = "openai") -> tuple[str, dict[str, Any]]:
    """Path and body of one request; the Ollama API's asks the engine for exactly what the OpenAI one's does
    (num_predict is max_tokens; usage is in every done line, so no stream_options)."""
    if api == "ollama":
        if kind == "embed":
            return "/api/embed", {"model": model, "input": EMBED_INPUT}
        messages = [{"role": "user", "content": PROMPT}]
        options = {"num_predict": 32}
        return "/api/chat", {"model": model, "messages": messages, "stream": kind == "stream", "options": options}
    if kind == "embed":
        return "/v1/embeddings", {"model": model, "input": EMBED_INPUT}
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 32,
    }
    if kind == "stream":
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return "/v1/chat/completions", body


def check_body(
    kind: str, model: str, status: int, headers: dict[str, str], raw: bytes, chunks: int, api: str = "openai"
) -> list[str]:
    """Everything wrong with one response, as readable strings (empty = correct)."""
    text = raw.decode(errors="replace")
    if status != 200:
        return [f"HTTP {status}: {text[:500]}"]
    if api == "ollama":
        return check_ollama_body(kind, model, headers, raw, chunks)
    problems: list[str] = []
    if kind == "stream":
        if not headers.get("content-type", "").startswith("text/event-stream"):
            problems.append(f"content-type {headers.get('content-type')!r}, expected text/event-stream")
        datas = [line[5:].strip() for line in text.split("\n") if line.startswith("data:")]
        if not datas or datas[-1] != "[DONE]":
            return [*problems, f"stream does not end with data: [DONE]; tail: {text[-300:]!r}"]
        try:
            events = [json.loads(d) for d in datas[:-1]]
        except ValueError as exc:
            return [*problems, f"SSE event is not JSON ({exc}): {text[:300]!r}"]
        content = "".join((c.get("delta") or {}).get("content") or "" for e in events for c in e.get("choices") or [])
        if content != "".join(stream_tokens(chunks)):
            problems.append(f"streamed content {content[:80]!r} differs from the upstream's")
        if not any(c.get("finish_reason") == "stop" for e in events for c in e.get("choices") or []):
            problems.append("no chunk with finish_reason 'stop'")
        if not any(e.get("usage") for e in events):
            problems.append("no usage chunk although stream_options.include_usage was set")
        models = sorted({str(e.get("model")) for e in events})
        if models != [model]:
            problems.append(f"chunk model field(s) {models}, expected [{model!r}]")
        if len(datas) != chunks + 3:
            problems.append(f"{len(datas)} SSE events, upstream sent {chunks + 3}")
        return problems
    try:
        obj = json.loads(raw)
    except ValueError:
        return [f"body is not JSON: {text[:300]!r}"]
    if not isinstance(obj, dict):
        return [f"body is not a JSON object: {text[:300]!r}"]
    if obj.get("model") != model:
        problems.append(f"model field {obj.get('model')!r}, expected {model!r}")
    if kind == "embed":
        vec = ((obj.get("data") or [{}])[0]).get("embedding")
        if not isinstance(vec, list) or len(vec) != EMBED_DIM:
            problems.append(f"embedding is not a {EMBED_DIM}-float list: {text[:200]!r}")
    else:
        message = ((obj.get("choices") or [{}])[0].get("message") or {}).get("content")
        if message != COMPLETION_TEXT:
            problems.append(f"message content {message!r} differs from the upstream's")
        if not obj.get("usage"):
            problems.append("no usage block")
    return problems


def check_ollama_body(kind: str, model: str, headers: dict[str, str], raw: bytes, chunks: int) -> list[str]:
    """The same checks for an answer of the Ollama API: NDJSON lines for a stream, the done line's counts."""
    text = raw.decode(errors="replace")
    problems: list[str] = []
    try:
        objs = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        return [f"body is not JSON (lines) ({exc}): {text[:300]!r}"]
    if not objs or not all(isinstance(o, dict) for o in objs):
        return [f"body is not JSON objects: {text[:300]!r}"]
    models = sorted({str(o.get("model")) for o in objs})
    if models != [model]:
        problems.append(f"model field(s) {models}, expected [{model!r}]")
    last = objs[-1]
    if kind == "embed":
        vecs = last.get("embeddings")
        if not isinstance(vecs, list) or len(vecs) != 1 or not isinstance(vecs[0], list) or len(vecs[0]) != EMBED_DIM:
            problems.append(f"embeddings is not one {EMBED_DIM}-float list: {text[:200]!r}")
        if not last.get("prompt_eval_count"):
            problems.append("no prompt_eval_count")
        return problems
    if kind == "stream":
        if not headers.get("content-type", "").startswith("application/x-ndjson"):
            problems.append(f"content-type {headers.get('content-type')!r}, expected application/x-ndjson")
        expected, want_lines, want_eval = "".join(stream_tokens(chunks)), chunks + 1, chunks
    else:
        expected, want_lines, want_eval = COMPLETION_TEXT, 1, None
    if len(objs) != want_lines:
        problems.append(f"{len(objs)} lines, expected {want_lines}")
    if any(o.get("done") for o in objs[:-1]) or last.get("done") is not True:
        problems.append(f"not exactly the last line done: true; last: {json.dumps(last)[:200]}")
    content = "".join(str((o.get("message") or {}).get("content") or "") for o in objs)
    if content != expected:
        problems.append(f"content {content[:80]!r} differs from the upstream's")
    if last.get("done_reason") != "stop":
        problems.append(f"done_reason {last.get('done_reason')!r}, expected 'stop'")
    if not last.get("prompt_eval_count") or not last.get("eval_count"):
        problems.append("no prompt_eval_count / eval_count in the done line")
    elif want_eval is not None and last["eval_count"] != want_eval:
        problems.append(f"eval_count {last['eval_count']}, the upstream counted {want_eval}")
    return problems


def loadgen(arm: Arm, kind: str, conns: int, duration: float, cpus: str | None) -> dict[str, Any]:
    path, body = request_for(kind, arm.model, arm.api)
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", f"http://127.0.0.1:{arm.port}{path}"]
    cmd += ["--body", json.dumps(body, separators=(",", ":")), "--conns", str(conns)]
    cmd += ["--duration", str(duration)]
    if arm.key:
        cmd += ["--key", arm.key]
    if kind == "stream":
        cmd.append("--ndjson" if arm.api == "ollama" else "--sse")
    proc = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, timeout=duration + 90, check=False)
    try:
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        sys.exit(f"loadgen failed (rc {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-2000:]}")
    if "fatal" in out:
        sys.exit(f"loadgen: {out['fatal']}")
    return out


KINDS = ("chat", "stream", "embed")
# The mock's request counter for each kind, by which of its APIs the arm reaches (Arm.upstream).
STAT_KEY = {
    "openai": {"chat": "chat", "stream": "chat_stream", "embed": "embeddings"},
    "ollama": {"chat": "ollama_chat", "stream": "ollama_chat_stream", "embed": "ollama_embed"},
}


def measure(arm: Arm, kind: str, conns: int, duration: float, ctx: dict[str, Any]) -> dict[str, Any]:
    """One load run with CPU accounting of the gateway, the mock and the machine."""
    gw_pid, mock_pid = ctx["gateway_pid"], ctx["mock_pid"]
    stats0 = json.loads(request(ctx["mock_port"], "GET", "/mock/stats")[2])
    kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    (busy0, steal0), gw0, mock0 = machine_cpu_s(), tree_cpu_s(gw_pid), tree_cpu_s(mock_pid)
    t0 = time.perf_counter()
    res = loadgen(arm, kind, conns, duration, ctx["client_cpus"])
    wall = time.perf_counter() - t0
    gw_cpu, mock_cpu = tree_cpu_s(gw_pid) - gw0, tree_cpu_s(mock_pid) - mock0
    busy, steal = (x - x0 for x, x0 in zip(machine_cpu_s(), (busy0, steal0), strict=True))
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the load generator process, start to exit
    lg_cpu = kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime
    stats1 = json.loads(request(ctx["mock_port"], "GET", "/mock/stats")[2])
    key = STAT_KEY[arm.upstream][kind]
    res.update(
        wall_total_s=round(wall, 3),
        gateway_cpu_s=round(gw_cpu, 3),
        mock_cpu_s=round(mock_cpu, 3),
        loadgen_process_cpu_s=round(lg_cpu, 3),
        # process CPU time on the machine not spent by gateway, mock or load generator
        foreign_cpu_s=round(max(0.0, busy - gw_cpu - mock_cpu - lg_cpu), 3),
        # time the hypervisor ran something else on our vCPUs (inflates latency, not CPU time)
        steal_s=round(steal, 3),
        upstream_received=stats1.get(key, 0) - stats0.get(key, 0),
    )
    if arm.via_gateway and res["completed"]:
        res["gateway_cpu_ms_per_req"] = round(1000 * gw_cpu / res["completed"], 4)
    return res


# --------------------------------------------------------------------------- summary


def median(vals: list[Any]) -> float | None:
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def arm_summary(runs: list[dict[str, Any]], comparison: str, sc: str, arm: str, via_gateway: bool) -> dict[str, Any]:
    """Medians over the recorded rounds of one arm in one scenario; gateway CPU over all of them."""
    rs = [r for r in runs if (r["comparison"], r["scenario"], r["arm"]) == (comparison, sc, arm) and not r["warmup"]]
    completed = sum(r["completed"] for r in rs)
    out: dict[str, Any] = {
        k: median([r.get(k) for r in rs])
        for k in ("rps", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "events_median")
    }
    out.update(
        errors=sum(r["errors"] for r in rs),
        completed=completed,
        upstream_received=sum(r["upstream_received"] for r in rs),
        foreign_cpu_s_max=max((r["foreign_cpu_s"] for r in rs), default=None),
        steal_s_max=max((r["steal_s"] for r in rs), default=None),
        loadgen_busy_max=max((r["loadgen_cpu_s"] / r["wall_s"] for r in rs if r["wall_s"]), default=None),
    )
    if via_gateway and completed:
        out["cpu_ms_per_req"] = round(1000 * sum(r["gateway_cpu_s"] for r in rs) / completed, 4)
    return out


def difference(b: float | None, a: float | None) -> float | None:
    return round(b - a, 4) if a is not None and b is not None else None


def summarise(runs: list[dict[str, Any]], scenarios: list[str]) -> dict[str, Any]:
    """Direct vs gateway, per scenario."""
    out: dict[str, Any] = {}
    for sc in scenarios:
        entry: dict[str, Any] = {
            "direct": arm_summary(runs, "overhead", sc, "direct", via_gateway=False),
            "gateway": arm_summary(runs, "overhead", sc, "gateway", via_gateway=True),
        }
        d, g = entry["direct"], entry["gateway"]
        entry["ratio"] = {k: round(g[k] / d[k], 4) if d[k] and g[k] else None for k in ("rps", "p50_ms", "ttft_p50_ms")}
        entry["added"] = {k: difference(g[k], d[k]) for k in ("p50_ms", "ttft_p50_ms")}
        out[sc] = entry
    return out


def summarise_keys(runs: list[dict[str, Any]], scenarios: list[str]) -> dict[str, Any]:
    """Master key vs virtual key through the same gateway, per scenario."""
    out: dict[str, Any] = {}
    for sc in scenarios:
        m = arm_summary(runs, "keys", sc, "master", via_gateway=True)
        v = arm_summary(runs, "keys", sc, "virtual", via_gateway=True)
        m_cpu, v_cpu = m.get("cpu_ms_per_req"), v.get("cpu_ms_per_req")
        out[sc] = {
            "master": m,
            "virtual": v,
            "cpu_ratio": round(v_cpu / m_cpu, 4) if m_cpu and v_cpu else None,
            "added_cpu_ms": difference(v_cpu, m_cpu),
            "added": {k: difference(v[k], m[k]) for k in ("p50_ms", "p99_ms", "ttft_p50_ms")},
        }
    return out


def summarise_ollama(runs: list[dict[str, Any]], scenarios: list[str]) -> dict[str, Any]:
    """OpenAI API vs Ollama API through the same gateway and the same Ollama-shaped engine, per scenario."""
    out: dict[str, Any] = {}
    for sc in scenarios:
        o = arm_summary(runs, "ollama", sc, "openai", via_gateway=True)
        n = arm_summary(runs, "ollama", sc, "ollama", via_gateway=True)
        o_cpu, n_cpu = o.get("cpu_ms_per_req"), n.get("cpu_ms_per_req")
        out[sc] = {
            "openai": o,
            "ollama": n,
            "cpu_ratio": round(n_cpu / o_cpu, 4) if o_cpu and n_cpu else None,
            "cpu_ratio_target": TARGET_OLLAMA_CPU_RATIO,
            "cpu_pass": None if not (o_cpu and n_cpu) else n_cpu / o_cpu <= TARGET_OLLAMA_CPU_RATIO,
            "added_cpu_ms": difference(n_cpu, o_cpu),
            "added": {k: difference(n[k], o[k]) for k in ("p50_ms", "p99_ms", "ttft_p50_ms")},
        }
    return out


def key_target_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario: virtual/master CPU ratio <= 1.10 and added p50 latency < 1 ms."""
    rows = []
    for sc, e in summary.items():
        ratio, added = e["cpu_ratio"], e["added"]["p50_ms"]
        rows.append(
            {
                "scenario": sc,
                "master_cpu_ms_per_req": e["master"].get("cpu_ms_per_req"),
                "virtual_cpu_ms_per_req": e["virtual"].get("cpu_ms_per_req"),
                "cpu_ratio": ratio,
                "cpu_ratio_target": TARGET_KEY_CPU_RATIO,
                "cpu_pass": None if ratio is None else ratio <= TARGET_KEY_CPU_RATIO,
                "master_p50_ms": e["master"]["p50_ms"],
                "virtual_p50_ms": e["virtual"]["p50_ms"],
                "added_p50_ms": added,
                "added_p50_target_ms": TARGET_KEY_ADDED_MS,
                "latency_pass": None if added is None else added < TARGET_KEY_ADDED_MS,
            }
        )
    return rows


def target_rows(summary: dict[str, Any], idle_rss: float | None, start_s: float | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, unit: str, litellm: float | None) -> None:
        ok = None if value is None else value <= target
        rows.append({"metric": name, "value": value, "target": target, "unit": unit, "pass": ok, "litellm": litellm})

    for sc, e in summary.items():
        kind = sc.split(":")[0]
        what = "stream" if kind == "stream" else "request"
        add(
            f"gateway CPU per {what} ({sc})",
            e["gateway"].get("cpu_ms_per_req"),
            TARGET_CPU_MS[kind],
            "ms",
            LITELLM_CPU_MS.get(sc),
        )
    for sc, e in summary.items():
        if sc.endswith(":1") and not sc.startswith("stream"):
            add(
                f"added p50 latency ({sc})",
                e["added"]["p50_ms"],
                TARGET_ADDED_MS,
                "ms",
                LITELLM_ADDED_P50_MS.get(sc),
            )
        if sc == "stream:1":
            add(
                f"added p50 TTFT ({sc})",
                e["added"]["ttft_p50_ms"],
                TARGET_ADDED_MS,
                "ms",
                LITELLM_ADDED_TTFT_MS[sc],
            )
    add("idle RSS, no model loaded", idle_rss, TARGET_IDLE_RSS_MB, "MB", LITELLM_IDLE_RSS_MB)
    add("start to ready (median)", start_s, TARGET_START_S, "s", LITELLM_START_S)
    return rows


def fmt(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


def scenario_table(summary: dict[str, Any]) -> Table:
    t = Table(title="Per scenario (medians over rounds)")
    for col in ("scenario", "arm", "req/s", "p50 ms", "p99 ms", "TTFT p50 ms", "gw CPU ms/req", "errors"):
        t.add_column(col, justify="left" if col in ("scenario", "arm") else "right")
    for sc, e in summary.items():
        for arm in ("direct", "gateway"):
            a = e[arm]
            cpu = fmt(a.get("cpu_ms_per_req"), 3) if arm == "gateway" else ""
            t.add_row(
                sc,
                arm,
                fmt(a["rps"], 1),
                fmt(a["p50_ms"], 3),
                fmt(a["p99_ms"], 3),
                fmt(a["ttft_p50_ms"], 3),
                cpu,
                str(a["errors"]),
            )
        r = e["ratio"]
        t.add_row(
            sc,
            "gw/direct",
            fmt(r["rps"]) + "x" if r["rps"] else "-",
            fmt(r["p50_ms"], 1) + "x" if r["p50_ms"] else "-",
            "",
            fmt(r["ttft_p50_ms"], 1) + "x" if r["ttft_p50_ms"] else "-",
            "",
            "",
            end_section=True,
        )
    return t


def target_table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Targets")
    for col in ("metric", "ARK", "target", "", "LiteLLM 1.108.7"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for r in rows:
        u = " " + r["unit"]
        t.add_row(
            r["metric"],
            fmt(r["value"], DECIMALS[r["unit"]]) + u,
            "≤ " + fmt(r["target"], 1) + u,
            coloured(r["pass"]),
            fmt(r["litellm"], 1) + u if r["litellm"] else "-",
        )
    return t


def keys_table(keys: dict[str, Any]) -> Table:
    t = Table(title="Virtual key vs master key (same gateway, interleaved)")
    cols = [
        "scenario",
        "master CPU ms/req",
        "virtual CPU ms/req",
        "virtual/master",
        f"≤ {TARGET_KEY_CPU_RATIO:.2f}",
        "master p50 ms",
        "virtual p50 ms",
        "added p50 ms",
        f"< {TARGET_KEY_ADDED_MS:g} ms",
        "virtual p99 ms",
        "errors",
    ]
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for r in keys["targets"]:
        e = keys["summary"][r["scenario"]]
        t.add_row(
            r["scenario"],
            fmt(r["master_cpu_ms_per_req"], 3),
            fmt(r["virtual_cpu_ms_per_req"], 3),
            fmt(r["cpu_ratio"], 3),
            coloured(r["cpu_pass"]),
            fmt(r["master_p50_ms"], 3),
            fmt(r["virtual_p50_ms"], 3),
            fmt(r["added_p50_ms"], 3),
            coloured(r["latency_pass"]),
            fmt(e["virtual"]["p99_ms"], 3),
            str(e["master"]["errors"] + e["virtual"]["errors"]),
        )
    return t


def ollama_table(summary: dict[str, Any]) -> Table:
    t = Table(title="Ollama API vs OpenAI API (same gateway, same Ollama-shaped engine, interleaved)")
    cols = [
        "scenario",
        "openai CPU ms/req",
        "ollama CPU ms/req",
        "ollama/openai",
        f"≤ {TARGET_OLLAMA_CPU_RATIO:.2f}",
        "openai p50 ms",
        "ollama p50 ms",
        "openai TTFT ms",
        "ollama TTFT ms",
        "openai req/s",
        "ollama req/s",
        "errors",
    ]
    for col in cols:
        t.add_column(col, justify="left" if col == "scenario" else "right")
    for sc, e in summary.items():
        o, n = e["openai"], e["ollama"]
        t.add_row(
            sc,
            fmt(o.get("cpu_ms_per_req"), 3),
            fmt(n.get("cpu_ms_per_req"), 3),
            fmt(e["cpu_ratio"], 3),
            coloured(e["cpu_pass"]),
            fmt(o["p50_ms"], 3),
            fmt(n["p50_ms"], 3),
            fmt(o["ttft_p50_ms"], 3),
            fmt(n["ttft_p50_ms"], 3),
            fmt(o["rps"], 1),
            fmt(n["rps"], 1),
            str(o["errors"] + n["errors"]),
        )
    return t


def coloured(ok: bool | None) -> str:
    colour = {True: "green", False: "red", None: "dim"}[ok]
    return f"[{colour}]{verdict(ok)}[/]"


# --------------------------------------------------------------------------- docs


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


BEGIN = "<!-- BEGIN gateway-overhead: generated by benchmarks/gateway_overhead/run.py -->"
END = "<!-- END gateway-overhead -->"


def measured_on(meta: dict[str, Any], m: dict[str, Any]) -> list[str]:
    """Where and when a docs section's numbers were measured."""
    return [
        f"Measured {meta['date']} on {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}.",
        f"Layout: {meta['layout']}; all at nice {meta['nice']}.",
    ]


def produced_by(meta: dict[str, Any]) -> list[str]:
    return ["Produced by this exact command, from the repository root:", "", f"    {meta['command']}", ""]


def remarks(problems: list[str], notes: list[str], title: str) -> list[str]:
    """A docs section's preflight problems (under ``title``) and notes on the run, when there are any."""
    lines: list[str] = []
    if problems:
        lines += ["", title, ""] + [f"* {p}" for p in problems]
    if notes:
        lines += ["", "Notes on this run (numbers may be noisy):", ""] + [f"* {n}" for n in notes]
    return lines


def docs_section(result: dict[str, Any]) -> str:
    m, meta = result["machine"], result["meta"]
    lines = [
        BEGIN,
        "## Gateway overhead",
        "",
        *measured_on(meta, m),
        f"Gateway command: `{meta['gateway_cmd']}`.",
        f"Rounds: {meta['rounds']}, {meta['duration_s']} s per arm and scenario, arms interleaved; "
        f"mock upstream streams {meta['chunks']} content chunks. CONFIG is the ARK config shown in "
        "benchmarks/gateway_overhead/README.md, DATA_DIR a fresh temporary directory.",
        "",
        *produced_by(meta),
        "| metric | ARK | target | | LiteLLM 1.108.7 |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for r in result["targets"]:
        u = " " + r["unit"]
        lines.append(
            f"| {r['metric']} | {fmt(r['value'], DECIMALS[r['unit']])}{u} "
            f"| ≤ {fmt(r['target'], 1)}{u} | {verdict(r['pass'])} "
            f"| {fmt(r['litellm'], 1) + u if r['litellm'] else '-'} |"
        )
    lines += [
        "",
        f"LiteLLM numbers are quoted for scale: {LITELLM_SOURCE}. "
        f"Start to ready, all runs: {result['start_to_ready_s']} s; gateway RSS after the load runs: "
        f"{result['rss_after_load_mb']} MB. Idle RSS is ARK's own (the gateway process and its engine workers); "
        f"the services it supervises when installed (Prometheus, node_exporter, Alertmanager) used "
        f"{result.get('idle_services_rss_mb', 0)} MB more.",
        "",
        "| scenario | direct req/s | gateway req/s | direct p50 ms | gateway p50 ms | gateway p99 ms "
        "| direct TTFT ms | gateway TTFT ms | gw CPU ms/req | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sc, e in result["summary"].items():
        d, g = e["direct"], e["gateway"]
        lines.append(
            f"| {sc} | {fmt(d['rps'], 0)} | {fmt(g['rps'], 0)} "
            f"| {fmt(d['p50_ms'], 3)} | {fmt(g['p50_ms'], 3)} "
            f"| {fmt(g['p99_ms'], 3)} | {fmt(d['ttft_p50_ms'], 3)} | {fmt(g['ttft_p50_ms'], 3)} "
            f"| {fmt(g.get('cpu_ms_per_req'), 3)} | {d['errors'] + g['errors']} |"
        )
    lines += remarks(result["problems"], result["notes"], "Gateway preflight problems:")
    lines += ["", END]
    return "\n".join(lines)


KEYS_BEGIN = "<!-- BEGIN gateway-keys: generated by benchmarks/gateway_overhead/run.py -->"
KEYS_END = "<!-- END gateway-keys -->"


def keys_section(result: dict[str, Any]) -> str:
    m, meta, keys = result["machine"], result["meta"], result["keys"]
    settings = ", ".join(f"`{k}` {v}" for k, v in keys["virtual_key"].items())
    lines = [
        KEYS_BEGIN,
        "## Virtual key vs master key",
        "",
        "What do a virtual key's budget and rate limits cost the gateway? The same gateway process, in the "
        "same run as the section above, gets the same load with the master key (arm A) and with a virtual "
        "key (arm B), interleaved.",
        "",
        *measured_on(meta, m),
        f"Rounds: {meta['rounds']}, {meta['duration_s']} s per arm and scenario, arms interleaved.",
        f"Virtual key from `POST /key/generate`: {settings} (never reached, so every request is admitted "
        "through the budget reservation, the rpm/tpm buckets and the parallel count, and settled).",
        f"Prices in the config: `input_cost_per_token = {keys['prices']['input_cost_per_token']:f}`, "
        f"`output_cost_per_token = {keys['prices']['output_cost_per_token']:f}` on `{MODEL_ID}`.",
        "",
        *produced_by(meta),
        "| scenario | master CPU ms/req | virtual CPU ms/req | virtual/master | target | "
        "| added p50 latency | target | |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for r in keys["targets"]:
        lines.append(
            f"| {r['scenario']} | {fmt(r['master_cpu_ms_per_req'], 3)} | {fmt(r['virtual_cpu_ms_per_req'], 3)} "
            f"| {fmt(r['cpu_ratio'], 3)} | ≤ {r['cpu_ratio_target']:.2f} | {verdict(r['cpu_pass'])} "
            f"| {fmt(r['added_p50_ms'], 3)} ms | < {r['added_p50_target_ms']:.1f} ms | {verdict(r['latency_pass'])} |"
        )
    lines += [
        "",
        "| scenario | master req/s | virtual req/s | master p50 ms | virtual p50 ms | master p99 ms "
        "| virtual p99 ms | master TTFT ms | virtual TTFT ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sc, e in keys["summary"].items():
        ma, vi = e["master"], e["virtual"]
        lines.append(
            f"| {sc} | {fmt(ma['rps'], 0)} | {fmt(vi['rps'], 0)} | {fmt(ma['p50_ms'], 3)} | {fmt(vi['p50_ms'], 3)} "
            f"| {fmt(ma['p99_ms'], 3)} | {fmt(vi['p99_ms'], 3)} "
            f"| {fmt(ma['ttft_p50_ms'], 3)} | {fmt(vi['ttft_p50_ms'], 3)} | {ma['errors'] + vi['errors']} |"
        )
    spend = keys["spend"]
    lines += [
        "",
        f"The virtual key's spend after the runs (`GET /key/info`): {fmt(spend.get('spend'), 6)} credits, "
        f"{spend.get('tokens_used')} tokens, for {spend['requests']} requests on it.",
    ]
    lines += remarks(keys["problems"], keys["notes"], "Virtual key preflight problems:")
    lines += ["", KEYS_END]
    return "\n".join(lines)


OLLAMA_BEGIN = "<!-- BEGIN gateway-ollama: generated by benchmarks/gateway_overhead/run.py -->"
OLLAMA_END = "<!-- END gateway-ollama -->"


def ollama_section(result: dict[str, Any]) -> str:
    m, meta, ollama = result["machine"], result["meta"], result["ollama"]
    chunks = meta["chunks"]
    lines = [
        OLLAMA_BEGIN,
        "## Ollama API vs OpenAI API",
        "",
        "What does a client that speaks Ollama's API cost the gateway, against one that speaks OpenAI's? The "
        "same gateway process, behind an Ollama-shaped engine (an `ollama` engine on the mock's `/api/chat` "
        "and `/api/embed`), gets the same load through `/v1/chat/completions` and `/v1/embeddings` (arm A, "
        "openai) and through `/api/chat` and `/api/embed` (arm B, ollama), interleaved, with the master key, "
        f"requesting `{OLLAMA_MODEL_ID}`. A stream is {chunks} tokens either way: {chunks + 3} SSE events "
        f"(with `stream_options.include_usage`) or {chunks + 1} NDJSON lines.",
        "",
        *measured_on(meta, m),
        f"Rounds: {meta['rounds']}, {meta['duration_s']} s per arm and scenario, arms interleaved.",
        "",
        *produced_by(meta),
        "| scenario | openai CPU ms/req | ollama CPU ms/req | ollama/openai | target | "
        "| openai p50 ms | ollama p50 ms | openai TTFT ms | ollama TTFT ms | openai req/s | ollama req/s | errors |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for sc, e in ollama["summary"].items():
        o, n = e["openai"], e["ollama"]
        lines.append(
            f"| {sc} | {fmt(o.get('cpu_ms_per_req'), 3)} | {fmt(n.get('cpu_ms_per_req'), 3)} "
            f"| {fmt(e['cpu_ratio'], 3)} | ≤ {e['cpu_ratio_target']:.2f} | {verdict(e['cpu_pass'])} "
            f"| {fmt(o['p50_ms'], 3)} | {fmt(n['p50_ms'], 3)} | {fmt(o['ttft_p50_ms'], 3)} "
            f"| {fmt(n['ttft_p50_ms'], 3)} | {fmt(o['rps'], 0)} | {fmt(n['rps'], 0)} | {o['errors'] + n['errors']} |"
        )
    lines += remarks(ollama["problems"], ollama["notes"], "Preflight problems:")
    lines += ["", OLLAMA_END]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help="KIND:CONNS,... with KIND chat|stream|embed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds per scenario and arm")
    ap.add_argument("--chunks", type=int, default=20, help="content chunks per mock stream")
    ap.add_argument("--start-runs", type=int, default=5, help="gateway starts timed for start-to-ready")
    ap.add_argument("--settle", type=float, default=2.0, help="idle seconds before reading idle RSS")
    ap.add_argument("--gateway-cmd", default=DEFAULT_GATEWAY_CMD)
    ap.add_argument("--gateway-port", type=int, default=4000)
    ap.add_argument("--upstream-port", type=int, default=8001)
    ap.add_argument("--ready-path", default="/health/ready")
    ap.add_argument("--master-key", default=MASTER_KEY)
    ap.add_argument("--alias", default="gpt-4", help="model name the gateway arm requests")
    ap.add_argument("--gateway-cpus", default="1")
    ap.add_argument("--client-cpus", default="0", help="CPUs for mock upstream, load generator, this script")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument(
        "--nice",
        type=int,
        help="run everything at this nice value (e.g. -10, needs root) to shield it from other work on the machine",
    )
    ap.add_argument(
        "--keys-compare",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the direct/gateway runs, compare the master key with a virtual key (budget, rate limits) "
        "through the same gateway",
    )
    ap.add_argument("--keys-scenarios", default=DEFAULT_KEY_SCENARIOS, help="scenarios of the virtual-key comparison")
    ap.add_argument(
        "--ollama-scenarios",
        default="",
        help="scenarios of the Ollama API vs OpenAI API comparison through an Ollama-shaped engine "
        f"(empty, the default: not run; e.g. {DEFAULT_OLLAMA_SCENARIOS}). Needs ARK's /api/chat and /api/embed",
    )
    ap.add_argument("--json", default=str(REPO / "bench-out" / "gateway_overhead.json"))
    ap.add_argument("--write-docs", metavar="MARKDOWN", help="write/update the results sections of this file")
    return ap.parse_args()


def parse_scenarios(spec: str) -> list[str]:
    scenarios = [s.strip() for s in spec.split(",") if s.strip()]
    for sc in scenarios:
        kind, _, conns = sc.partition(":")
        if kind not in KINDS or not conns.isdigit():
            sys.exit(f"bad scenario {sc!r}: use chat:N, stream:N or embed:N")
    return scenarios


@contextlib.contextmanager
def running(cmd: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn(cmd, log)
    try:
        yield proc
    finally:
        stop(proc)


class Bench:
    """One benchmark session: layout, temp dir with config and logs, the arms."""

    def __init__(self, a: argparse.Namespace, console: Console) -> None:
        self.a, self.console = a, console
        self.scenarios = parse_scenarios(a.scenarios)
        self.key_scenarios = parse_scenarios(a.keys_scenarios) if a.keys_compare else []
        self.ollama_scenarios = parse_scenarios(a.ollama_scenarios)
        pin = not a.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        self.gw_cpus: str | None = a.gateway_cpus if pin else None
        self.cl_cpus: str | None = a.client_cpus if pin else None
        self.layout = (
            f"gateway on CPU {a.gateway_cpus} (taskset -c {a.gateway_cpus}); "
            f"mock upstream, load generator and harness on CPU {a.client_cpus}"
            if pin
            else "unpinned (fewer than 2 CPUs, --no-pin, or no taskset)"
        )
        self.tmp = Path(tempfile.mkdtemp(prefix="ark-gwbench-"))
        self.upstream = f"http://127.0.0.1:{a.upstream_port}"
        self.config = self.tmp / "ark.toml"
        self.config.write_text(
            CONFIG_TOML.format(
                key=a.master_key,
                port=a.gateway_port,
                upstream=self.upstream,
                alias=a.alias,
                model=MODEL_ID,
                input_cost=INPUT_COST_PER_TOKEN,
                output_cost=OUTPUT_COST_PER_TOKEN,
            )
            + (
                OLLAMA_CONFIG_TOML.format(
                    upstream=self.upstream,
                    ollama_model=OLLAMA_MODEL_ID,
                    input_cost=INPUT_COST_PER_TOKEN,
                    output_cost=OUTPUT_COST_PER_TOKEN,
                )
                if self.ollama_scenarios
                else ""
            )
        )
        # the Ollama API comparison: both arms through the Ollama-shaped engine, one per client API
        self.via_openai = Arm("openai", a.gateway_port, a.master_key, OLLAMA_MODEL_ID, True, "openai", "ollama")
        self.via_ollama = Arm("ollama", a.gateway_port, a.master_key, OLLAMA_MODEL_ID, True, "ollama", "ollama")
        self.direct = Arm("direct", a.upstream_port, None, MODEL_ID, via_gateway=False)
        self.gateway = Arm("gateway", a.gateway_port, a.master_key, a.alias, via_gateway=True)
        self.master = Arm("master", a.gateway_port, a.master_key, a.alias, via_gateway=True)

    def gateway_cmd(self, data_dir: str, python: str = sys.executable, config: str = "") -> list[str]:
        subs = {
            "python": python,
            "config": config or str(self.config),
            "data_dir": data_dir,
            "upstream": self.upstream,
            "port": str(self.a.gateway_port),
        }
        return pinned([part.format(**subs) for part in shlex.split(self.a.gateway_cmd)], self.gw_cpus)

    def start_gateway(self, log: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
        """Start the gateway with a fresh data dir (each start is a first start)."""
        return running(self.gateway_cmd(tempfile.mkdtemp(prefix="data-", dir=self.tmp)), log)

    def start_to_ready(self) -> list[float]:
        times = []
        for i in range(self.a.start_runs):
            log = self.tmp / f"gateway-start{i}.log"
            with self.start_gateway(log) as gw:
                times.append(round(wait_ready(gw, self.a.gateway_port, self.a.ready_path, 60, log), 3))
            while port_open(self.a.gateway_port):
                time.sleep(0.05)
        return times

    def preflight(self, arms: list[Arm], limits_headers: bool = False) -> list[str]:
        """One chat, stream and embeddings request per arm, bodies checked in full; with limits_headers,
        also OpenAI's x-ratelimit headers (a key with limits gets them)."""
        problems = []
        for arm in arms:
            for kind in KINDS:
                path, body = request_for(kind, arm.model, arm.api)
                status, headers, raw = request(arm.port, "POST", path, body, arm.key)
                found = check_body(kind, arm.model, status, headers, raw, self.a.chunks, arm.api)
                if limits_headers and status == 200 and "x-ratelimit-remaining-requests" not in headers:
                    found.append("no x-ratelimit-remaining-requests header: are the key's limits applied?")
                problems += [f"{arm.name} {kind}: {p}" for p in found]
        for p in problems:
            self.console.print(f"[red]preflight[/] {p}", highlight=False)
        if any(p.startswith("direct") or "HTTP " in p or "not JSON" in p for p in problems):
            sys.exit("preflight failed: the load runs would measure errors, not the gateway")
        return problems

    def create_virtual_key(self) -> Arm:
        """A virtual key with a budget and limits it never reaches, created with the master key."""
        status, _, raw = request(self.a.gateway_port, "POST", "/key/generate", VIRTUAL_KEY, self.a.master_key)
        try:
            secret = json.loads(raw)["key"] if status == 200 else None
        except (ValueError, KeyError, TypeError):
            secret = None
        if not isinstance(secret, str):
            sys.exit(
                f"POST /key/generate answered {status}: {raw[:500]!r}\n"
                "the gateway cannot make virtual keys; run with --no-keys-compare"
            )
        return Arm("virtual", self.a.gateway_port, secret, self.a.alias, via_gateway=True)

    def key_spend(self, arm: Arm) -> dict[str, Any]:
        """The virtual key's spend and tokens as the gateway reports them (GET /key/info)."""
        status, _, raw = request(self.a.gateway_port, "GET", f"/key/info?key={arm.key}", key=self.a.master_key)
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            if status == 200:
                info = json.loads(raw)["info"]
                return {"spend": info.get("spend"), "tokens_used": info.get("tokens_used")}
        return {"spend": None, "tokens_used": None, "error": f"HTTP {status}: {raw[:300]!r}"}

    def interleaved(
        self, comparison: str, scenarios: list[str], arm_a: Arm, arm_b: Arm, ctx: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Per scenario: a warm-up of each arm, then --rounds rounds in the order A B, B A, A B, ..."""
        a, runs = self.a, []
        for sc in scenarios:
            kind, conns = sc.split(":")[0], int(sc.split(":")[1])
            if a.warmup > 0:
                for arm in (arm_a, arm_b):
                    r = measure(arm, kind, conns, a.warmup, ctx)
                    runs.append(
                        {"comparison": comparison, "scenario": sc, "arm": arm.name, "round": 0, "warmup": True, **r}
                    )
            for rnd in range(1, a.rounds + 1):
                for arm in (arm_a, arm_b) if rnd % 2 else (arm_b, arm_a):
                    time.sleep(0.3)
                    r = measure(arm, kind, conns, a.duration, ctx)
                    runs.append(
                        {"comparison": comparison, "scenario": sc, "arm": arm.name, "round": rnd, "warmup": False, **r}
                    )
                    self.console.print(progress_line(sc, rnd, arm, r), highlight=False)
        return runs

    def run(self) -> dict[str, Any]:
        a, console = self.a, self.console
        for port in (a.gateway_port, a.upstream_port):
            if port_open(port):
                sys.exit(f"port {port} is already in use; stop whatever listens there first")
        if self.cl_cpus:
            os.sched_setaffinity(0, {int(c) for c in self.cl_cpus.split(",")})
        if a.nice is not None:
            set_nice(a.nice)
        shown = shlex.join(self.gateway_cmd("DATA_DIR", "python", "CONFIG"))
        console.print(f"[bold]layout:[/] {self.layout}\n[bold]gateway:[/] {shown}\n[bold]logs:[/] {self.tmp}")
        mock_cmd = [sys.executable, str(HERE / "mock_upstream.py"), "--port", str(a.upstream_port)]
        mock_cmd += ["--chunks", str(a.chunks), "--embedding-dim", str(EMBED_DIM)]
        mock_log = self.tmp / "mock.log"
        with running(pinned(mock_cmd, self.cl_cpus), mock_log) as mock:
            wait_ready(mock, a.upstream_port, "/mock/stats", 10, mock_log)
            starts = self.start_to_ready()
            console.print(f"start to ready: {starts} s, median {fmt(median(starts), 3)} s")
            log = self.tmp / "gateway.log"
            with self.start_gateway(log) as gw:
                wait_ready(gw, a.gateway_port, a.ready_path, 60, log)
                problems = self.preflight([self.direct, self.gateway])
                time.sleep(a.settle)
                idle_rss, services_rss = rss_split_mb(gw.pid)
                console.print(
                    f"gateway idle RSS after start and the preflight requests: ARK {idle_rss} MB, "
                    f"supervised services {services_rss} MB"
                )
                # the virtual key is made (and checked) now, so a gateway without keys fails before the long runs
                virtual = self.create_virtual_key() if self.key_scenarios else None
                key_problems = self.preflight([virtual], limits_headers=True) if virtual else []
                ollama_arms = [self.via_openai, self.via_ollama]
                ollama_problems = self.preflight(ollama_arms) if self.ollama_scenarios else []
                ctx = {
                    "gateway_pid": gw.pid,
                    "mock_pid": mock.pid,
                    "mock_port": a.upstream_port,
                    "client_cpus": self.cl_cpus,
                }
                runs = self.interleaved("overhead", self.scenarios, self.direct, self.gateway, ctx)
                spend: dict[str, Any] = {}
                if virtual is not None:
                    console.print(f"[bold]virtual key vs master key:[/] {VIRTUAL_KEY}")
                    runs += self.interleaved("keys", self.key_scenarios, self.master, virtual, ctx)
                    time.sleep(1.0)  # give the gateway a moment to write the settled spend to its store
                    spend = self.key_spend(virtual)
                if self.ollama_scenarios:
                    console.print("[bold]Ollama API vs OpenAI API[/] through the Ollama-shaped engine")
                    runs += self.interleaved("ollama", self.ollama_scenarios, *ollama_arms, ctx)
                loaded_rss = rss_split_mb(gw.pid)[0]
        summary = summarise(runs, self.scenarios)
        keys: dict[str, Any] | None = None
        if virtual is not None:
            keys_summary = summarise_keys(runs, self.key_scenarios)
            answered = sum(r["completed"] for r in runs if r["arm"] == "virtual") + 3  # + the preflight's
            keys = {
                "virtual_key": VIRTUAL_KEY,
                "prices": {
                    "input_cost_per_token": INPUT_COST_PER_TOKEN,
                    "output_cost_per_token": OUTPUT_COST_PER_TOKEN,
                },
                "problems": key_problems,
                "spend": {**spend, "requests": answered},
                "summary": keys_summary,
                "targets": key_target_rows(keys_summary),
            }
        ollama: dict[str, Any] | None = None
        if self.ollama_scenarios:
            ollama = {
                "model": OLLAMA_MODEL_ID,
                "problems": ollama_problems,
                "summary": summarise_ollama(runs, self.ollama_scenarios),
            }
        log_errors = [
            line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line or "Traceback" in line
        ]
        if log_errors:
            console.print(f"[yellow]gateway log has {len(log_errors)} ERROR/Traceback lines, kept: {log}[/]")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return {
            "meta": {
                "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "command": shlex.join(["python", *sys.argv]),
                "layout": self.layout,
                "gateway_cmd": shown,
                "rounds": a.rounds,
                "duration_s": a.duration,
                "warmup_s": a.warmup,
                "chunks": a.chunks,
                "nice": os.getpriority(os.PRIO_PROCESS, 0),
                "scenarios": self.scenarios,
                "key_scenarios": self.key_scenarios,
                "ollama_scenarios": self.ollama_scenarios,
            },
            "machine": machine(),
            "start_to_ready_s": starts,
            "idle_rss_mb": idle_rss,  # ARK's own process tree (gateway, engine workers)
            "idle_services_rss_mb": services_rss,  # what it supervises (Prometheus...), apart
            "rss_after_load_mb": loaded_rss,
            "problems": problems,
            "gateway_log_errors": {"count": len(log_errors), "first": log_errors[:5], "log": str(log)},
            "summary": summary,
            "targets": target_rows(summary, idle_rss, median(starts)),
            "keys": keys,
            "ollama": ollama,
            "litellm_reference": {
                "source": LITELLM_SOURCE,
                "cpu_ms_per_req": LITELLM_CPU_MS,
                "added_p50_ms": LITELLM_ADDED_P50_MS,
                "added_ttft_ms": LITELLM_ADDED_TTFT_MS,
                "idle_rss_mb": LITELLM_IDLE_RSS_MB,
                "start_to_ready_s": LITELLM_START_S,
            },
            "runs": runs,
        }


def progress_line(sc: str, rnd: int, arm: Arm, r: dict[str, Any]) -> str:
    line = f"  {sc:<10} round {rnd} {arm.name:<7} {r['rps']:>9.1f} req/s  p50 {fmt(r['p50_ms'], 3)} ms"
    line += f"  p99 {fmt(r['p99_ms'], 3)} ms"
    if "ttft_p50_ms" in r:
        line += f"  ttft50 {fmt(r['ttft_p50_ms'], 3)} ms"
    if arm.via_gateway:
        line += f"  cpu {fmt(r.get('gateway_cpu_ms_per_req'), 3)} ms/req"
    if r["errors"]:
        line += f"  [red]errors {r['errors']}[/]"
    return line + f"  other-cpu {r['foreign_cpu_s']:.2f}s steal {r['steal_s']:.2f}s"


def sanity_notes(result: dict[str, Any]) -> list[str]:
    """Things that make the numbers suspect: errors, lost requests, a busy machine."""
    notes = []
    limit = 0.1 * result["meta"]["duration_s"]
    if result["gateway_log_errors"]["count"]:
        errs = result["gateway_log_errors"]
        notes.append(f"gateway log: {errs['count']} ERROR/Traceback lines, first: {errs['first'][0][:200]}")
    for sc, e in result["summary"].items():
        d, g = e["direct"], e["gateway"]
        if d["errors"] or g["errors"]:
            notes.append(f"{sc}: errors direct {d['errors']}, gateway {g['errors']} (JSON runs[].error_sample)")
        if g["upstream_received"] < g["completed"]:
            notes.append(f"{sc}: upstream received {g['upstream_received']} < {g['completed']} answered")
        if d["events_median"] != g["events_median"]:
            notes.append(f"{sc}: SSE events per stream direct {d['events_median']}, gateway {g['events_median']}")
        if (g["foreign_cpu_s_max"] or 0) > limit:
            notes.append(f"{sc}: other processes used up to {g['foreign_cpu_s_max']:.1f} CPU-s in a gateway run")
        if (g["steal_s_max"] or 0) > limit:
            notes.append(f"{sc}: the hypervisor stole up to {g['steal_s_max']:.1f} CPU-s in a gateway run")
    return notes


def key_notes(result: dict[str, Any]) -> list[str]:
    """The same checks for the virtual-key comparison, plus: did the budget path charge the key?"""
    keys, notes = result["keys"], []
    limit = 0.1 * result["meta"]["duration_s"]
    for sc, e in keys["summary"].items():
        m, v = e["master"], e["virtual"]
        if m["errors"] or v["errors"]:
            notes.append(f"{sc}: errors master {m['errors']}, virtual {v['errors']} (JSON runs[].error_sample)")
        for name, arm in (("master", m), ("virtual", v)):
            if arm["upstream_received"] < arm["completed"]:
                notes.append(f"{sc} {name}: upstream received {arm['upstream_received']} < {arm['completed']} answered")
        if m["events_median"] != v["events_median"]:
            notes.append(f"{sc}: SSE events per stream master {m['events_median']}, virtual {v['events_median']}")
        foreign = max(m["foreign_cpu_s_max"] or 0, v["foreign_cpu_s_max"] or 0)
        if foreign > limit:
            notes.append(f"{sc}: other processes used up to {foreign:.1f} CPU-s in a run")
        steal = max(m["steal_s_max"] or 0, v["steal_s_max"] or 0)
        if steal > limit:
            notes.append(f"{sc}: the hypervisor stole up to {steal:.1f} CPU-s in a run")
    spend = keys["spend"]
    if not spend.get("spend"):
        notes.append(f"the virtual key shows no spend after {spend['requests']} requests: {spend}")
    return notes


def ollama_notes(result: dict[str, Any]) -> list[str]:
    """Errors, lost requests and a busy machine in the Ollama API comparison."""
    notes = []
    limit = 0.1 * result["meta"]["duration_s"]
    for sc, e in result["ollama"]["summary"].items():
        o, n = e["openai"], e["ollama"]
        if o["errors"] or n["errors"]:
            notes.append(f"{sc}: errors openai {o['errors']}, ollama {n['errors']} (JSON runs[].error_sample)")
        for name, arm in (("openai", o), ("ollama", n)):
            if arm["upstream_received"] < arm["completed"]:
                notes.append(f"{sc} {name}: upstream received {arm['upstream_received']} < {arm['completed']} answered")
        foreign = max(o["foreign_cpu_s_max"] or 0, n["foreign_cpu_s_max"] or 0)
        if foreign > limit:
            notes.append(f"{sc}: other processes used up to {foreign:.1f} CPU-s in a run")
        steal = max(o["steal_s_max"] or 0, n["steal_s_max"] or 0)
        if steal > limit:
            notes.append(f"{sc}: the hypervisor stole up to {steal:.1f} CPU-s in a run")
    return notes


def report(result: dict[str, Any], console: Console) -> None:
    console.print()
    if result["summary"]:
        console.print(scenario_table(result["summary"]))
    console.print(target_table(result["targets"]))
    console.print(f"[dim]LiteLLM column: {LITELLM_SOURCE}.[/]")
    for n in result["notes"]:
        console.print(f"[yellow]note:[/] {n}", highlight=False)
    console.print(f"start to ready: {result['start_to_ready_s']} s")
    console.print(f"gateway RSS: idle {result['idle_rss_mb']} MB, after the load runs {result['rss_after_load_mb']} MB")
    keys = result["keys"]
    if keys is not None:
        console.print()
        console.print(keys_table(keys))
        for p in keys["problems"]:
            console.print(f"[red]virtual key preflight:[/] {p}", highlight=False)
        for n in keys["notes"]:
            console.print(f"[yellow]note:[/] {n}", highlight=False)
        spend = keys["spend"]
        console.print(
            f"virtual key spend: {fmt(spend.get('spend'), 6)} credits, {spend.get('tokens_used')} tokens "
            f"for {spend['requests']} requests"
        )
    ollama = result["ollama"]
    if ollama is not None:
        console.print()
        console.print(ollama_table(ollama["summary"]))
        for p in ollama["problems"]:
            console.print(f"[red]Ollama API preflight:[/] {p}", highlight=False)
        for n in ollama["notes"]:
            console.print(f"[yellow]note:[/] {n}", highlight=False)


def main() -> None:
    a = parse_args()
    console = Console(width=None if sys.stdout.isatty() else 120)
    result = Bench(a, console).run()
    result["notes"] = sanity_notes(result)
    if result["keys"] is not None:
        result["keys"]["notes"] = key_notes(result)
    if result["ollama"] is not None:
        result["ollama"]["notes"] = ollama_notes(result)
    report(result, console)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2))
    console.print(f"JSON: {a.json}")
    if a.write_docs:  # the sections of the comparisons that ran
        if result["summary"]:
            write_docs(Path(a.write_docs), docs_section(result), BEGIN, END)
        if result["keys"] is not None:
            write_docs(Path(a.write_docs), keys_section(result), KEYS_BEGIN, KEYS_END)
        if result["ollama"] is not None:
            write_docs(Path(a.write_docs), ollama_section(result), OLLAMA_BEGIN, OLLAMA_END)
        console.print(f"docs: {a.write_docs}")


if __name__ == "__main__":
    main()
