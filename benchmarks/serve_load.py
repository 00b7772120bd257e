"""`edgekd serve` under load, on this machine only: requests/s, p50/p99 latency, the server's peak RSS
and failed requests at 1, 8 and 32 concurrent clients, for each build given.

    python benchmarks/serve_load.py build/cpu-int8 [build/text/cpu-int8 ...] [--requests 2000] [--seconds 20]

Each build: `edgekd serve` starts on 127.0.0.1 in its own process (one worker: the server as one app
process would run it), then asyncio clients on localhost, one keep-alive connection each, send one
input per request (a real MNIST digit as a base64 PNG, or a docstring paragraph), each client waiting
for its answer before its next request. Each concurrency level runs after 50 warm-up requests, for `--requests` requests or
`--seconds`, whichever ends first. Peak RSS is the server's VmHWM (the kernel's high-water mark, so
nothing between samples is missed). Client and server share the machine's cores, so requests/s is
what this machine does as both. Results: benchmarks/results/serve.json."""

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


def bench_build(build: Path, *, levels: list[int], requests: int, seconds: float, server_args: list[str]) -> dict:
    import httpx

    bodies = [json.dumps({"inputs": [x]}).encode() for x in sample_inputs(build)]
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", "serve", str(build), "--host", "127.0.0.1",
                             "--port", str(port), *server_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"edgekd serve exited: {proc.stderr.read().decode()[-500:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("edgekd serve did not answer /health within 60 s")
            time.sleep(0.2)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("builds", nargs="+", type=Path)
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels")
    ap.add_argument("--requests", type=int, default=2000, help="requests per level at most")
    ap.add_argument("--seconds", type=float, default=20, help="seconds per level at most")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args, server_args = ap.parse_known_args()  # the rest goes to edgekd serve (--max-batch 16, ...)
    levels = [int(c) for c in args.clients.split(",")]
    results = []
    for build in args.builds:
        print(f"{build}:", flush=True)
        results.append(bench_build(build, levels=levels, requests=args.requests, seconds=args.seconds,
                                   server_args=server_args))
    failed = sum(r["failed"] for b in results for r in b["levels"])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    env = {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
           "load_1_5_15min_after": [round(v, 2) for v in os.getloadavg()], "server_args": server_args,
           "requests_per_level": args.requests, "seconds_per_level": args.seconds}
    try:
        import onnxruntime
        import starlette
        import uvicorn

        env.update(onnxruntime=onnxruntime.__version__, starlette=starlette.__version__, uvicorn=uvicorn.__version__)
    except ImportError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"builds": results, "failed_requests": failed, "environment": env}, indent=2))
    print(f"failed requests: {failed}\n{args.out}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
