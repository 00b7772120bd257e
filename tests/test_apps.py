"""The example apps in examples/apps, run as their users run them, each against the Python runtime on the
same inputs: the Python app as a command on the MNIST and MiniLM builds, the Node.js app under node's own
test runner (onnxruntime-node), the web page in headless Chromium (onnxruntime-web). What they need beyond
the Python packages (node, the apps' node_modules, Chromium and its WebDriver) `make test` installs
(examples/apps/setup.sh); without it these tests skip saying what is missing, and on CI they fail."""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from conftest import chromium, missing

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "examples" / "apps"
SCREENSHOT = ROOT / "build" / "test-output" / "web-app-mnist.png"  # kept after the run (build/ is not tracked)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)  # (N, K)


@pytest.fixture(scope="module")
def digits(tiny_build, tmp_path_factory) -> dict:
    """Ten digits of the tiny MNIST build's test split: raw uint8 (N, 28, 28), as PNG files, and the Python
    runtime's probabilities (N, 10) and labels."""
    import edgekd.runtime
    from PIL import Image

    from edgekd.data.arrays import split_indices
    from edgekd.data.mnist import _digits
    from edgekd.recipe import load_recipe

    build = tiny_build("cpu-int8")
    r = load_recipe(build / "recipe.lock.toml")
    x, _ = _digits()
    raw = x[split_indices({"train": len(x)}, r.data, seed=r.seed, where="MNIST")["test"][1][:10], ..., 0]
    folder = tmp_path_factory.mktemp("digits")
    files = []
    for i, a in enumerate(raw):
        files.append(folder / f"digit-{i}.png")
        Image.fromarray(a).save(files[-1])
    model = edgekd.runtime.load(build)
    p = _softmax(model.run(raw))
    return {"build": build, "raw": raw, "files": files, "probabilities": p,
            "labels": [model.labels[k] for k in p.argmax(1)]}


def _app(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(APPS / "python" / "predict.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- Python

def test_python_app_labels_image_files(digits):
    res = _app(digits["build"], *digits["files"])
    assert res.returncode == 0, res.stderr
    want = [f"{f}: {label} ({p.max():.4f})" for f, label, p in zip(digits["files"], digits["labels"], digits["probabilities"])]
    assert res.stdout.splitlines() == want


def test_python_app_finds_nearest_sentences(tiny_text_build):
    import edgekd.runtime

    texts = ["Return the absolute value of a number.", "Compute the absolute value of x.",
             "Open a file and return a stream.", "Read the whole file into a string."]
    res = _app(tiny_text_build, *texts)
    assert res.returncode == 0, res.stderr
    e = edgekd.runtime.load(tiny_text_build).predict(texts)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    sim = e @ e.T
    np.fill_diagonal(sim, -2)
    want = [f"{t!r} -> {texts[j]!r} ({sim[i, j]:.3f})" for i, (t, j) in enumerate(zip(texts, sim.argmax(1)))]
    assert res.stdout.splitlines() == want


def test_python_app_says_what_is_wrong_in_one_line(digits, tmp_path):
    res = _app(digits["build"], tmp_path / "no-such.png")
    assert res.returncode != 0 and res.stdout == ""
    assert res.stderr.startswith("error: input 0:") and "does not exist" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- Node.js

def _preprocessing_cases(build_manifest: dict, digit: np.ndarray) -> list[dict]:
    """Manifests with every image step (resize up and down, center crop, scale, normalize, layout; RGB and
    grayscale models; uint8, float32 and float64 images of 1, 3 and 4 channels), an image each, and the
    Python runtime's model input for it."""
    from edgekd.runtime import _ImagePrep

    rng = np.random.default_rng(0)
    # the RGB manifest sizes the longer side as builds write it now (floor: 29 x 37 -> 20 x 25); the
    # grayscale one has no longer_side, as manifests written before the key existed (round)
    rgb_steps = [{"op": "resize", "shorter_side": 20, "interpolation": "bilinear", "longer_side": "floor"},
                 {"op": "center_crop", "size": [16, 16]},
                 {"op": "scale", "factor": 1 / 255}, {"op": "normalize", "mean": [0.48, 0.45, 0.41], "std": [0.23, 0.22, 0.26]},
                 {"op": "layout", "order": "NCHW"}]
    gray_steps = [{"op": "resize", "shorter_side": 24, "interpolation": "bilinear"}, {"op": "center_crop", "size": [20, 20]},
                  {"op": "scale", "factor": 1 / 255}, {"op": "normalize", "mean": [0.13], "std": [0.31]},
                  {"op": "layout", "order": "NCHW"}]
    float_steps = [{"op": "normalize", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25]}, {"op": "layout", "order": "NCHW"}]
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)  # noqa: E731
    f = lambda dtype, *shape: (rng.random(shape) * 255).astype(dtype)  # noqa: E731
    specs = [("rgb", rgb_steps, [3, 16, 16], "uint8 RGB, shrunk", u8(29, 37, 3)),
             ("rgb", rgb_steps, [3, 16, 16], "uint8 RGBA", u8(31, 23, 4)),
             ("rgb", rgb_steps, [3, 16, 16], "uint8 gray to RGB", u8(40, 24, 1)),
             ("rgb", rgb_steps, [3, 16, 16], "uint8 RGB, enlarged", u8(17, 13, 3)),
             ("rgb", rgb_steps, [3, 16, 16], "float32 RGB", f(np.float32, 33, 26, 3)),
             ("rgb", rgb_steps, [3, 16, 16], "float64 RGB, one side kept", f(np.float64, 21, 20, 3)),
             ("grayscale", gray_steps, [1, 20, 20], "uint8 RGB to gray", u8(50, 41, 3)),
             ("grayscale", gray_steps, [1, 20, 20], "uint8 RGB to gray, enlarged", u8(15, 13, 3)),
             ("grayscale", gray_steps, [1, 20, 20], "float32 RGB to gray", f(np.float32, 26, 30, 3)),
             ("grayscale", gray_steps, [1, 20, 20], "float64 RGBA to gray", f(np.float64, 30, 26, 4)),
             ("rgb", float_steps, [3, 9, 8], "float32 RGB, no scale", f(np.float32, 9, 8, 3) / 255),
             (None, None, None, "the MNIST build's manifest", digit[..., None])]
    cases = []
    for color, steps, shape, name, image in specs:
        pre = build_manifest["preprocessing"] if color is None else \
            {"kind": "image", "raw": "test", "color": color, "steps": steps, "input_shape": shape}
        manifest = {"schema_version": 1, "preprocessing": pre}
        h, w, c = image.shape
        cases.append({"name": name, "manifest": manifest,
                      "image": {"width": w, "height": h, "channels": c, "dtype": str(image.dtype), "data": image.ravel().tolist()},
                      "expected": _ImagePrep(manifest).one(image, 0).ravel().tolist()})
    return cases


def test_node_app_gives_the_python_runtimes_outputs(digits, tmp_path):
    """node --test examples/apps/node: preprocessing from the manifest equal to Python's bit for bit, the
    INT8 model's probabilities through onnxruntime-node, the command line on PNG files, the sha256 check."""
    node = shutil.which("node")
    if node is None:
        missing("node is not installed (Debian: apt-get install nodejs npm)")
    if not (APPS / "node" / "node_modules" / "onnxruntime-node").is_dir():
        missing("examples/apps/node/node_modules is missing (npm ci --ignore-scripts there)")
    manifest = json.loads((digits["build"] / "manifest.json").read_text())
    cases = {"build": str(digits["build"]),
             "digits": [{"file": str(f), "width": 28, "height": 28, "pixels": a.ravel().tolist(), "label": label,
                         "probability": float(p.max()), "probabilities": p.tolist()}
                        for f, a, label, p in zip(digits["files"], digits["raw"], digits["labels"], digits["probabilities"])],
             "preprocessing": _preprocessing_cases(manifest, digits["raw"][0])}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    res = subprocess.run([node, "--test", "--test-reporter=tap", "test/predict.test.mjs"], cwd=APPS / "node",
                         env={**os.environ, "EDGEKD_APP_CASES": str(tmp_path / "cases.json")},
                         capture_output=True, text=True, timeout=180)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|todo) (\d+)$", out, re.M)}
    # 4 tests, and one subtest per preprocessing case
    assert counts == {"pass": 4 + len(cases["preprocessing"]), "fail": 0, "skipped": 0, "todo": 0}, out[-3000:]


# ---------------------------------------------------------------- web page

@contextmanager
def _serve(build: Path):
    """examples/apps on a local HTTP server, the build folder at /web/model/ (where the README puts it)."""

    class Handler(SimpleHTTPRequestHandler):
        def translate_path(self, path):
            p = unquote(urlsplit(path).path)
            if p.startswith("/web/model/"):
                return str(build / p[len("/web/model/"):])
            return super().translate_path(path)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(APPS)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (conftest.chromium) for the web page."""
    if not (APPS / "web" / "node_modules" / "onnxruntime-web").is_dir():
        missing("examples/apps/web/node_modules is missing (npm ci --ignore-scripts there)")
    with chromium(width=900, height=700) as driver:
        driver.set_script_timeout(60)
        yield driver


_DRAW = """
const [pixels, done] = arguments;
const pad = window.edgekdPage.pad, ctx = pad.getContext("2d");
const img = ctx.createImageData(pad.width, pad.height);
pixels.forEach((v, i) => img.data.set([v, v, v, 255], 4 * i));
ctx.putImageData(img, 0, 0);
window.edgekdPage.predict().then((r) => done({label: r.label, probabilities: r.probabilities}),
                                 (e) => done({error: String(e)}));
"""


def _page_result(driver) -> tuple[str, float]:
    from selenium.webdriver.common.by import By

    label = driver.find_element(By.ID, "label").text
    shown = driver.find_element(By.ID, "probability").text
    assert re.fullmatch(r"\d{1,3}\.\d%", shown), shown
    return label, float(shown[:-1]) / 100


def _agree(label: str, p_page, label_py: str, p_py: np.ndarray, labels: list[str]) -> None:
    """Same probabilities within WebAssembly's float rounding, and the same label unless the top two
    are tied within that rounding."""
    p_page = np.asarray(p_page)
    assert np.abs(p_page - p_py).max() < 1e-4, (p_page, p_py)
    top2 = np.sort(p_py)[-2:]
    assert label == label_py or (top2[1] - top2[0] < 1e-4 and p_py[labels.index(label)] >= top2[0])


def test_web_page_classifies_digits_in_chromium(digits, browser, tmp_path, capsys):
    """The page loads the INT8 model with onnxruntime-web from local files only; a test digit put on its
    canvas, and a digit drawn with the mouse, show the Python runtime's class and probability."""
    import edgekd.runtime
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = edgekd.runtime.load(digits["build"])
    with _serve(digits["build"]) as url:
        browser.get(f"{url}/web/")
        state = WebDriverWait(browser, 60).until(lambda d: d.execute_script("return document.body.dataset.state"))
        logs = [e["message"] for e in browser.get_log("browser")]
        assert state == "ready", (browser.find_element(By.ID, "status").text, logs)

        for a, label_py, p_py in zip(digits["raw"][:5], digits["labels"], digits["probabilities"]):
            r = browser.execute_async_script(_DRAW, a.ravel().tolist())
            assert "error" not in r, r
            label, shown = _page_result(browser)
            assert label == r["label"] and shown == pytest.approx(max(r["probabilities"]), abs=6e-4)
            _agree(label, r["probabilities"], label_py, p_py, model.labels)
        browser.save_screenshot(str(tmp_path / "web-app-mnist.png"))

        # a 7 drawn with the mouse: the page's prediction is the Python runtime's on the canvas's pixels
        browser.find_element(By.ID, "clear").click()
        assert browser.find_element(By.ID, "label").text == "–"
        pad = browser.find_element(By.ID, "pad")  # 280 x 280 CSS pixels, offsets from its centre
        ActionChains(browser).move_to_element_with_offset(pad, -70, -80).click_and_hold() \
            .move_by_offset(140, 0).move_by_offset(-90, 170).release().perform()
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "label").text != "–")
        rgba = np.array(browser.execute_script(
            "const p = window.edgekdPage.pad; return Array.from(p.getContext('2d').getImageData(0, 0, p.width, p.height).data)"),
            np.uint8).reshape(28, 28, 4)
        assert (rgba[..., 0] > 0).sum() > 20 and (rgba[..., :3] == rgba[..., :1]).all()  # white strokes on black
        p_py = _softmax(model.run([rgba]))[0]
        label, shown = _page_result(browser)
        assert label == model.labels[int(p_py.argmax())] or np.sort(p_py)[-1] - np.sort(p_py)[-2] < 1e-4
        assert shown == pytest.approx(p_py.max(), abs=6e-4)
        browser.save_screenshot(str(tmp_path / "web-app-drawn.png"))

        # nothing came from anywhere but the local server; the model ran on onnxruntime-web's WebAssembly
        fetched = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert fetched and all(u.startswith(url + "/") for u in fetched), fetched
        assert any(u.endswith(".wasm") for u in fetched) and any("/web/model/student-int8.onnx" in u for u in fetched)

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "web-app-mnist.png", SCREENSHOT)
    shutil.copy(tmp_path / "web-app-drawn.png", SCREENSHOT.with_name("web-app-drawn.png"))
    with capsys.disabled():
        print(f"\nweb page screenshots: {SCREENSHOT} and {SCREENSHOT.with_name('web-app-drawn.png')}")
