"""`edgekd serve` under load, on this machine only: requests/s, p50/p99 latency, the server's peak RSS
and failed requests at 1, 8 and 32 concurrent clients, for each build given; for a text-generation
build, tokens/s, time to first token and latency at 1, 4 and 8 clients streaming from /generate.

    python benchmarks/serve_load.py build/cpu-int8 [build/text/cpu-int8 ...] [--requests 2000] [--seconds 20]
    python benchmarks/serve_load.py build/lm/cpu-int4 [--requests 24] [--max-new-tokens 32]

Each build: `edgekd serve` starts on 127.0.0.1 in its own process (one worker: the server as one app
process would run it), then asyncio clients on localhost, one keep-alive connection each, send one
input per request (a real MNIST digit as a base64 PNG, or a docstring paragraph), each client waiting
for its answer before its next request. Each concurrency level runs after 50 warm-up requests, for `--requests` requests or
`--seconds`, whichever ends first. Peak RSS is the server's VmHWM (the kernel's high-water mark, so
nothing between samples is missed). Client and server share the machine's cores, so requests/s is
what this machine does as both. Results: benchmarks/results/serve.json.

A text-generation build: each request streams (`"stream": true`, server-sent events, one per token) a
greedy response of at most `--max-new-tokens` to a held-out prompt (a standard-library function's
source from the modules the python-functions source keeps for testing: no training prompt), after
4 warm-up requests. Tokens/s is the generated tokens of a level over its wall time; time to first token
is from sending the request to its first event. The server admits as many generations at once as the
most clients (`--max-generations`, unless given), so a 503 is a failure, not load shedding. Then one
client disconnects after its first token, and the server must end that generation (/health's
`generating` back to 0) and answer the next request. Results: benchmarks/results/serve-lm.json."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def sample_inputs(build: Path, n: int = 256) -> list:
    """n raw inputs of the build's kind, as a client sends them."""
    manifest = json.loads((build / "manifest.json").read_text())
    pre = manifest["preprocessing"]
    if manifest["task"] == "text-generation":
        return held_out_prompts(n)
    if pre["kind"] == "text":
        from edgekd.data.text import stdlib_documents

        docs = stdlib_documents()
        paras = [p for mod in sorted(docs) for p in docs[mod] if 40 <= len(p) <= 600]
        return paras[:n]
    from PIL import Image

    c, h, w = pre["input_shape"]
    if (c, h, w) == (1, 28, 28):
        from edgekd.data.mnist import _digits

        images = _digits()[0][-n:, :, :, 0]  # real digits
    else:
        images = np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    out = []
    for a in images:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def held_out_prompts(n: int, max_chars: int = 400) -> list[str]:
    """Up to n short prompts as a text-generation build's users send them: standard-library functions
    (source without docstring) of the modules python-functions keeps for its test split."""
    from edgekd.data.code import stdlib_functions
    from edgekd.data.text import _bucket

    return [code for mod, pairs in stdlib_functions().items() if _bucket(mod) < 10
            for code, _ in pairs if len(code) <= max_chars][:n]


def is_lm(build: Path) -> bool:
    return json.loads((build / "manifest.json").read_text())["task"] == "text-generation"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vm(pid: int, key: str) -> float:
    """VmHWM / VmRSS of a process in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def level(port: int, bodies: list[bytes], *, clients: int, requests: int, seconds: float) -> dict:
    """`clients` concurrent clients, each on its own keep-alive connection sending one request after
    another, until `requests` are done or `seconds` have passed. HTTP/1.1 is written by hand: a
    general-purpose client (httpx) spent more CPU per request than the server (README, "Serve"), and
    on a small shared machine the load generator must not be what is measured."""
    lat, failed, errors = [], 0, []
    sent = 0
    stop = time.perf_counter() + seconds

    async def client():
        nonlocal sent, failed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while sent < requests and time.perf_counter() < stop:
                body = bodies[sent % len(bodies)]
                sent += 1
                t = time.perf_counter()
                try:
                    writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
                    data = await reader.readexactly(n)
                    ok = status == 200 and data.startswith((b'{"predictions"', b'{"embeddings"'))
                    if not ok and len(errors) < 3:
                        errors.append(f"{status} {data[:120]!r}")
                except (OSError, asyncio.IncompleteReadError, ValueError, AttributeError) as e:
                    ok = False
                    if len(errors) < 3:
                        errors.append(repr(e)[:120])
                lat.append(time.perf_counter() - t)
                failed += not ok
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"clients": clients, "requests": len(lat), "failed": failed, "seconds": round(wall, 2),
            "requests_per_s": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "errors": errors}


def start_server(build: Path, server_args: list[str], *, wait_s: float = 120):
    """`edgekd serve BUILD` on a free localhost port, once /health answers -> (process, port, url)."""
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", "serve", str(build), "--host", "127.0.0.1",
                             "--port", str(port), *server_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"edgekd serve exited: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, port, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit(f"edgekd serve did not answer /health within {wait_s:.0f} s")
        time.sleep(0.2)


def bench_build(build: Path, *, levels: list[int], requests: int, seconds: float, server_args: list[str]) -> dict:
    import httpx

    bodies = [json.dumps({"inputs": [x]}).encode() for x in sample_inputs(build)]
    proc, port, url = start_server(build, server_args)
    try:
        rss_idle = _vm(proc.pid, "VmRSS")
        chosen = httpx.get(f"{url}/health").json()  # the batch size the server measured at start
        asyncio.run(level(port, bodies, clients=1, requests=50, seconds=30))  # warm-up
        rows = []
        for clients in levels:
            before = httpx.get(f"{url}/health").json()
            load0 = os.getloadavg()[0]
            cpu0, own0 = _cpu_s(proc.pid), time.process_time()
            row = asyncio.run(level(port, bodies, clients=clients, requests=requests, seconds=seconds))
            cpu1, own1 = _cpu_s(proc.pid), time.process_time()
            after = httpx.get(f"{url}/health").json()
            # CPU per request of each side: what the two share of this machine's cores
            row["server_cpu_ms_per_request"] = round(1000 * (cpu1 - cpu0) / row["requests"], 3)
            row["client_cpu_ms_per_request"] = round(1000 * (own1 - own0) / row["requests"], 3)
            calls = after["calls"] - before["calls"]
            row["mean_batch"] = round((after["inputs_run"] - before["inputs_run"]) / max(calls, 1), 2)
            row["load_1min_before"] = round(load0, 2)
            rows.append(row)
            print(f"  {clients:3d} clients: {row['requests_per_s']:8.1f} req/s  p50 {row['p50_ms']:7.2f} ms  "
                  f"p99 {row['p99_ms']:7.2f} ms  batch {row['mean_batch']:5.2f}  CPU ms/req server "
                  f"{row['server_cpu_ms_per_request']:.2f} client {row['client_cpu_ms_per_request']:.2f}  failed {row['failed']}"
                  f"  (load {load0:.2f})", flush=True)
        peak = _vm(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    manifest = json.loads((build / "manifest.json").read_text())
    return {"build": str(build), "model": manifest["model"], "task": manifest["task"],
            "batch": chosen["batch"], "ms_per_input_by_batch": chosen["ms_per_input_by_batch"],
            "server_rss_idle_mb": round(rss_idle, 1), "server_peak_rss_mb": round(peak, 1), "levels": rows}


# ---------------------------------------------------------------- text generation

async def _body_pieces(reader, head: bytes):
    """The body of a response whose head has been read, piece by piece as it arrives (chunked
    transfer encoding, as a streamed response comes, or one Content-Length body)."""
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    if m:
        yield await reader.readexactly(int(m.group(1)))
        return
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)  # the chunk and its CRLF; the last chunk is empty
        if size == 0:
            return
        yield data[:-2]


def _generate_request(body: bytes) -> bytes:
    return (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def stream_one(reader, writer, body: bytes, *, stop_after_first: bool = False) -> dict:
    """One streamed /generate on an open connection: its status, seconds to the first token event and to
    the end, the token events counted (one per token), and what went wrong, if anything."""
    t = time.perf_counter()
    writer.write(_generate_request(body))
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    buf, first, tokens, done, error, last = b"", None, 0, False, None, {}
    async for piece in _body_pieces(reader, head):
        buf += piece
        if status != 200:
            continue
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.removeprefix(b"data: ")
            if data == b"[DONE]":
                done = True
                continue
            e = json.loads(data)
            if "error" in e:
                error = str(e["error"])[:120]
            elif "text" in e:
                tokens += 1
                first = first or time.perf_counter()
                last = e
                if stop_after_first:
                    return {"status": status, "ttft": first - t, "tokens": tokens}
    end = time.perf_counter()
    if status != 200:
        error = f"{status} {buf[:120]!r}"
    elif not done:
        error = error or "the stream ended without [DONE]"
    elif not tokens:
        error = "no token events"
    elif last.get("tokens") not in (None, tokens):
        error = f"{tokens} token events but the last says {last['tokens']} tokens"
    return {"status": status, "ttft": (first or end) - t, "latency": end - t, "tokens": tokens,
            "finish_reason": last.get("finish_reason"), "error": error}


async def lm_level(port: int, bodies: list[bytes], *, clients: int, requests: int, seconds: float) -> dict:
    """`clients` concurrent clients, each on its own keep-alive connection streaming one response after
    another, until `requests` are done or `seconds` have passed (responses under way then finish)."""
    done, errors = [], []
    sent = 0
    stop = time.perf_counter() + seconds

    async def client():
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while sent < requests and time.perf_counter() < stop:
                body = bodies[sent % len(bodies)]
                sent += 1
                t = time.perf_counter()
                try:
                    r = await stream_one(reader, writer, body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    r = {"status": 0, "tokens": 0, "latency": time.perf_counter() - t, "error": repr(e)[:120]}
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the old one is unusable
                if r["error"] and len(errors) < 3:
                    errors.append(r["error"])
                done.append(r)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in done if not r["error"]]
    tokens = sum(r["tokens"] for r in done)

    def pct(key: str, q: float) -> float | None:
        return round(1000 * float(np.percentile([r[key] for r in ok], q)), 1) if ok else None

    # per stream, the time between its tokens after the first: what a reader of one response sees
    gaps = [(r["latency"] - r["ttft"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1]
    return {"clients": clients, "requests": len(done), "failed": len(done) - len(ok), "seconds": round(wall, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "requests_per_s": round(len(done) / wall, 2),
            "ttft_p50_ms": pct("ttft", 50), "ttft_p90_ms": pct("ttft", 90),
            "latency_p50_ms": pct("latency", 50), "latency_p90_ms": pct("latency", 90),
            "latency_p99_ms": pct("latency", 99),
            "ms_per_token_in_stream_p50": round(1000 * float(np.median(gaps)), 2) if gaps else None,
            "mean_tokens_per_response": round(tokens / max(len(done), 1), 1),
            "finish_reasons": {k: sum(r.get("finish_reason") == k for r in ok)
                               for k in sorted({str(r.get("finish_reason")) for r in ok})},
            "errors": errors}


def disconnect_check(port: int, url: str, body: bytes, *, wait_s: float = 30) -> dict:
    """A client that goes away after its first token: the server must end that generation (/health's
    `generating` back to 0: its turn and key/value cache released) and answer the next request."""
    import httpx

    before = httpx.get(f"{url}/health").json()

    async def leave() -> dict:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        r = await stream_one(reader, writer, body, stop_after_first=True)
        writer.transport.abort()  # gone without a goodbye, as a closed tab or a killed process goes
        return r

    first = asyncio.run(leave())
    t0 = time.monotonic()
    health = httpx.get(f"{url}/health").json()
    while health["generating"] and time.monotonic() - t0 < wait_s:
        time.sleep(0.05)
        health = httpx.get(f"{url}/health").json()
    freed_s = time.monotonic() - t0
    asked = json.loads(body)["max_new_tokens"]
    after = asyncio.run(lm_level(port, [json.dumps({**json.loads(body), "max_new_tokens": 8}).encode()],
                                 clients=1, requests=1, seconds=wait_s))
    return {"first_token_ms": round(1000 * first["ttft"], 1), "max_new_tokens_asked": asked,
            "generating_after": health["generating"], "freed": health["generating"] == 0,
            "seconds_to_free": round(freed_s, 3),
            # tokens the server made for that client in all: far fewer than asked when it stopped
            "tokens_made_for_it": health["tokens"] - before["tokens"],
            "next_request_ok": after["failed"] == 0 and after["requests"] == 1, "next_request_errors": after["errors"]}


def bench_lm_build(build: Path, *, levels: list[int], requests: int, seconds: float, server_args: list[str],
                   max_new_tokens: int) -> dict:
    import httpx

    if not any(a.startswith("--max-generations") for a in server_args):
        server_args = [*server_args, "--max-generations", str(max(levels))]
    prompts = sample_inputs(build, 64)
    bodies = [json.dumps({"prompt": p, "max_new_tokens": max_new_tokens, "stream": True}).encode() for p in prompts]
    proc, port, url = start_server(build, server_args)
    try:
        rss_idle = _vm(proc.pid, "VmRSS")
        health = httpx.get(f"{url}/health").json()
        asyncio.run(lm_level(port, bodies, clients=1, requests=4, seconds=60))  # warm-up
        rows = []
        for clients in levels:
            before = httpx.get(f"{url}/health").json()
            load0 = os.getloadavg()[0]
            cpu0, own0 = _cpu_s(proc.pid), time.process_time()
            row = asyncio.run(lm_level(port, bodies, clients=clients, requests=requests, seconds=seconds))
            cpu1, own1 = _cpu_s(proc.pid), time.process_time()
            after = httpx.get(f"{url}/health").json()
            row["server_tokens"] = after["tokens"] - before["tokens"]  # the server's count, against the events
            row["server_cpu_ms_per_token"] = round(1000 * (cpu1 - cpu0) / max(row["tokens"], 1), 2)
            row["client_cpu_ms_per_token"] = round(1000 * (own1 - own0) / max(row["tokens"], 1), 3)
            row["generating_after"] = after["generating"]
            row["load_1min_before"] = round(load0, 2)
            row["server_peak_rss_mb_so_far"] = round(_vm(proc.pid, "VmHWM"), 1)
            rows.append(row)
            print(f"  {clients:3d} clients: {row['tokens_per_s']:7.1f} tokens/s  TTFT p50 {row['ttft_p50_ms']} "
                  f"p90 {row['ttft_p90_ms']} ms  latency p50 {row['latency_p50_ms']} p90 {row['latency_p90_ms']} ms  "
                  f"{row['requests']} requests, failed {row['failed']}  (load {load0:.2f})", flush=True)
        disconnect = disconnect_check(port, url, json.dumps({"prompt": prompts[0], "max_new_tokens": 256,
                                                             "stream": True}).encode())
        print(f"  disconnect after the first token: generating back to 0 in {disconnect['seconds_to_free']} s "
              f"({disconnect['tokens_made_for_it']} of {disconnect['max_new_tokens_asked']} tokens made), "
              f"next request ok: {disconnect['next_request_ok']}", flush=True)
        peak = _vm(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    manifest = json.loads((build / "manifest.json").read_text())
    return {"build": str(build), "model": manifest["model"], "task": manifest["task"],
            "server_args": server_args, "max_generations": health["max_generations"], "max_new_tokens": max_new_tokens,
            "greedy": True,
            "prompts": len(prompts), "prompt_chars_mean": round(float(np.mean([len(p) for p in prompts])), 1),
            "server_rss_idle_mb": round(rss_idle, 1), "server_peak_rss_mb": round(peak, 1), "levels": rows,
            "disconnect": disconnect}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("--clients", default=None, help="concurrency levels (default 1,8,32; text generation 1,4,8)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per level at most")
    ap.add_argument("--seconds", type=float, default=20, help="seconds per level at most")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="text generation: tokens per response at most")
    ap.add_argument("--out", type=Path, default=None, help="default results/serve.json (serve-lm.json: text generation)")
    args, server_args = ap.parse_known_args()  # the rest goes to edgekd serve (--max-batch 16, ...)
    lm = {is_lm(b) for b in args.builds}
    if len(lm) > 1:
        raise SystemExit("give text-generation builds and the others in separate runs (their results differ in shape)")
    lm = lm.pop()
    levels = [int(c) for c in (args.clients or ("1,4,8" if lm else "1,8,32")).split(",")]
    out = args.out or RESULTS / ("serve-lm.json" if lm else "serve.json")
    results = []
    for build in args.builds:
        print(f"{build}:", flush=True)
        if lm:
            results.append(bench_lm_build(build, levels=levels, requests=args.requests, seconds=args.seconds,
                                          server_args=server_args, max_new_tokens=args.max_new_tokens))
        else:
            results.append(bench_build(build, levels=levels, requests=args.requests, seconds=args.seconds,
                                       server_args=server_args))
    failed = sum(r["failed"] for b in results for r in b["levels"])
    failed += sum(not b["disconnect"]["next_request_ok"] for b in results if "disconnect" in b)
    freed = all(b["disconnect"]["freed"] for b in results if "disconnect" in b)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    env = {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
           "load_1_5_15min_after": [round(v, 2) for v in os.getloadavg()], "server_args": server_args,
           "requests_per_level": args.requests, "seconds_per_level": args.seconds}
    if lm:
        env["max_new_tokens"] = args.max_new_tokens
    try:
        import onnxruntime
        import starlette
        import uvicorn

        env.update(onnxruntime=onnxruntime.__version__, starlette=starlette.__version__, uvicorn=uvicorn.__version__)
    except ImportError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"builds": results, "failed_requests": failed, "environment": env}, indent=2))
    print(f"failed requests: {failed}\n{out}")
    if failed or not freed:
        sys.exit(1)


if __name__ == "__main__":
    main()
