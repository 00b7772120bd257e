"""`edgekd serve`: the HTTP API on the tiny builds (starlette's TestClient), request validation (a 4xx
with one line, never a traceback), the micro-batcher (merging, bounded queue), and a real uvicorn
server with two worker processes on localhost."""
import asyncio
import base64
import io
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")


def _client(build, **spec):
    from starlette.testclient import TestClient

    from edgekd.serve import ServeSpec, create_app

    return TestClient(create_app(ServeSpec(build=str(build), **spec)), raise_server_exceptions=False)


def _png(a: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def digits(tiny_build):
    from test_runtime import _raw_mnist_test

    raw, _ = _raw_mnist_test(tiny_build("cpu-int8"))
    return raw[:8, :, :, 0]


def test_image_predictions_over_http_equal_the_runtime(tiny_build, digits):
    import edgekd.runtime

    build = tiny_build("cpu-int8")
    want = edgekd.runtime.load(build).predict(digits, top_k=2)
    with _client(build) as c:
        r = c.post("/predict", json={"inputs": [_png(d) for d in digits[:4]] + [d.tolist() for d in digits[4:]],
                                     "top_k": 2})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert [p["label"] for p in got] == [p["label"] for p in want]
        assert np.allclose([p["probability"] for p in got], [p["probability"] for p in want])
        assert len(got[0]["top"]) == 2
        assert c.get("/metadata").json() == json.loads((build / "manifest.json").read_text())
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["inputs_run"] == 8


def test_text_embeddings_over_http(tiny_text_build):
    import edgekd.runtime

    texts = ["How do I open a file?", "Sort a list in place."]
    want = edgekd.runtime.load(tiny_text_build).predict(texts)
    with _client(tiny_text_build) as c:
        r = c.post("/predict", json={"inputs": texts})
        assert r.status_code == 200, r.text
        assert np.allclose(r.json()["embeddings"], want, atol=1e-6)
        for body, status, match in [({"inputs": [""]}, 422, "input 0 is an empty string"),
                                    ({"inputs": ["ok", 3]}, 422, "input 1 is a number, not a string"),
                                    ({"inputs": ["a" * 10_001]}, 413, "at most 10000"),
                                    ({"inputs": ["a"] * 65}, 413, "at most 64; split")]:
            r = c.post("/predict", json=body)
            assert r.status_code == status and match in r.json()["error"], (body, r.text)


@pytest.mark.parametrize("body, status, match", [
    ({"inputs": ["not base64!"]}, 422, "not valid base64"),
    ({"inputs": [base64.b64encode(b"hello").decode()]}, 422, "not an image Pillow can decode"),
    ({"inputs": []}, 422, "is empty"),
    ({"inputs": "x"}, 422, "must be a list, got a string"),
    ({"inputs": [5]}, 422, "input 0 is a number"),
    ({"inputs": [[[1, 2], [3]]]}, 422, "ragged"),
    ({"inputs": [np.zeros((30, 30), int).tolist()]}, 422, "give 28x28 images"),
    ({"inputs": [np.full((28, 28), 999).tolist()]}, 422, "0-255"),
    ({"inputs": [np.zeros((28, 28), int).tolist()], "top_k": 0}, 422, "top_k"),
    ({"x": 1}, 422, 'with "inputs"'),
    ({"inputs": [np.zeros((28, 28), int).tolist()], "foo": 1}, 422, "unknown field 'foo'"),
    ([1, 2], 422, 'with "inputs"'),
])
def test_bad_requests_get_a_4xx_with_one_line(tiny_build, body, status, match):
    with _client(tiny_build("cpu-int8")) as c:
        r = c.post("/predict", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert match in err and "\n" not in err and "Traceback" not in r.text


def test_malformed_and_oversized_bodies(tiny_build):
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (5000, 5000)).save(big, "PNG")  # a few kB of PNG, 25M pixels decoded
    with _client(tiny_build("cpu-int8"), max_body_bytes=1 << 20) as c:
        cases = [(c.post("/predict", content=b"{not json"), 400, "not JSON"),
                 (c.post("/predict", content=b"\xff\xfe"), 400, "not JSON"),
                 (c.post("/predict", content=b"x" * (2 << 20)), 413, "at most 1048576"),
                 (c.post("/predict", json={"inputs": [base64.b64encode(big.getvalue()).decode()]}), 413, "5000x5000"),
                 (c.get("/nope"), 404, "POST /predict"), (c.get("/predict"), 405, "GET is not allowed")]
    for r, status, match in cases:
        assert r.status_code == status and match in r.json()["error"], r.text


def test_serve_spec_is_checked():
    from edgekd.errors import InputError
    from edgekd.serve import ServeSpec

    with pytest.raises(InputError, match="max_batch must be >= 1"):
        ServeSpec(build="b", max_batch=0)
    with pytest.raises(InputError, match="raise max_queue"):
        ServeSpec(build="b", max_queue=8, max_items=64)


class _SlowModel:
    """forward returns each item as its own row and records batch sizes."""
    def __init__(self):
        self.batches = []

    def forward(self, items):
        self.batches.append(len(items))
        time.sleep(0.05)
        return np.array(items, dtype=np.float32)[:, None]


def test_batcher_merges_requests_that_overlap_and_bounds_its_queue():
    from edgekd.serve import Batcher, RequestError, ServeSpec

    async def go():
        model = _SlowModel()
        b = Batcher(model, ServeSpec(build="b", max_batch=4, max_queue=8, max_items=4, max_wait_ms=0))
        b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.01)  # the model is busy with [0]: these queue and share calls
        rest = [asyncio.ensure_future(b.submit([i, i + 100])) for i in range(1, 5)]
        await asyncio.sleep(0)
        with pytest.raises(RequestError) as full:  # 8 items queued: one more is refused
            await b.submit([9])
        outs = await asyncio.gather(first, *rest)
        await b.stop()
        return model.batches, outs, full.value

    batches, outs, full = asyncio.run(go())
    assert batches == [1, 4, 4]  # two requests of 2 per call, max_batch 4
    assert [o[:, 0].tolist() for o in outs] == [[0], [1, 101], [2, 102], [3, 103], [4, 104]]
    assert full.status == 503 and "at capacity" in str(full)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_edgekd_serve_runs_uvicorn_with_workers(tiny_build, digits):
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgekd", "serve", str(tiny_build("cpu-int8")), "--port", str(port),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
            time.sleep(0.2)
        r = httpx.post(f"{url}/predict", json={"inputs": [_png(digits[0])]}, timeout=10)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in [str(i) for i in range(10)]
        assert httpx.post(f"{url}/predict", json={"inputs": [""]}, timeout=10).status_code == 422
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_edgekd_serve_on_a_missing_build_exits_2_with_one_line(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    res = CliRunner().invoke(main, ["serve", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "give a build folder" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_busy_port_is_one_line_before_the_banner(tiny_build):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "edgekd", "serve", str(tiny_build("cpu-int8")), "--port", str(port)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "serving" not in r.stderr and "edgekd serve:" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and f"127.0.0.1:{port}" in r.stderr and "--port" in r.stderr
