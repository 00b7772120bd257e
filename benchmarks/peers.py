"""edgekd's quantization-aware-distilled INT8 student next to the post-training quantizers a user
would reach for without edgekd, all starting from the same distilled FP32 student:

- onnxruntime `quantize_static` (QDQ, per-channel, MinMax, otherwise defaults) -> ONNX Runtime;
- NNCF post-training quantization of the OpenVINO model -> OpenVINO;
- Intel Neural Compressor 3.x static PTQ (PT2E) -> ONNX (dynamo exporter) -> ONNX Runtime.

Accuracy on the build's test split from the runtime's outputs, p50 latency at batch 1, 1 thread, each
model in a fresh process (edgekd's harness). Needs a finished build (default build/cpu-int8) and
`pip install -e '.[peers]'`. One run; results and environment in benchmarks/results/peers.json.

    python benchmarks/peers.py [--build build/cpu-int8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def ort_static(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekd.quantize import _Reader

    quantize_static(str(fp32), str(out), _Reader("input", calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def nncf_ptq(fp32: Path, out: Path, calib: np.ndarray) -> Path:
    import nncf
    import openvino as ov

    model = ov.convert_model(str(fp32))
    q = nncf.quantize(model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]), subset_size=len(calib))
    ov.save_model(q, str(out))
    return out


def inc_ptq(student, out: Path, calib: np.ndarray) -> Path:
    import onnx
    import torch
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare

    x = torch.from_numpy(calib[:2])  # batch 2: torch.export specializes a size-1 dimension
    exported = export(student.eval(), example_inputs=(x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    prepared = prepare(exported, StaticQuantConfig())
    with torch.no_grad():
        for i in range(0, len(calib), 32):
            prepared(torch.from_numpy(calib[i:i + 32]))
    q = convert(prepared)
    torch.onnx.export(q, (x,), str(out), dynamo=True, input_names=["input"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    onnx.save(onnx.load(str(out)), str(out), save_as_external_data=False)  # weights inline, one file
    Path(str(out) + ".data").unlink(missing_ok=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build" / "cpu-int8"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import torch

    from edgekd.bench import benchmark
    from edgekd.data import load_data
    from edgekd.export import to_openvino
    from edgekd.models import build_arch
    from edgekd.recipe import load_recipe

    build = Path(args.build)
    report = json.loads((build / "report.json").read_text())
    recipe = load_recipe(build / "recipe.lock.toml")
    data = load_data(recipe.data, seed=recipe.seed)
    calib = data.x_train[: recipe.quantize.calibration]
    cache = build.parent / ".cache" / report["stages"]["distill"]["cache"]
    student = build_arch(recipe.student.arch)
    student.load_state_dict(torch.load(cache / "student.pt", weights_only=True))
    fp32 = build / "student-fp32.onnx"
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        np.savez(d / "test.npz", x=data.x_test)
        to_openvino(build / "student-int8.onnx", d / "edgekd-int8.xml")
        candidates = [("edgekd QAT-distilled INT8", "onnxruntime", lambda: build / "student-int8.onnx"),
                      ("edgekd QAT-distilled INT8", "openvino", lambda: d / "edgekd-int8.xml"),
                      ("student FP32 (reference)", "onnxruntime", lambda: fp32),
                      ("onnxruntime quantize_static", "onnxruntime", lambda: ort_static(fp32, d / "ort.onnx", calib)),
                      ("NNCF PTQ", "openvino", lambda: nncf_ptq(fp32, d / "nncf.xml", calib)),
                      ("Intel Neural Compressor PTQ (PT2E)", "onnxruntime", lambda: inc_ptq(student, d / "inc.onnx", calib))]
        made = []
        for name, runtime, make in candidates:
            try:
                made.append((name, runtime, make()))
            except Exception as e:  # noqa: BLE001 - a peer that fails is a result to report, not a crash
                rows.append({"method": name, "runtime": runtime, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"})
                traceback.print_exc()
        # Rounds, models interleaved within each, fresh process per run: p50 is the median over rounds,
        # so that drift of this shared machine hits every model alike.
        timings: dict[str, list] = {}
        for _ in range(args.rounds):
            for name, runtime, path in made:
                res, logits = benchmark(path, runtime=runtime, inputs=d / "test.npz", threads=1, warmup=200,
                                        iterations=2000, batch_sizes=[1])
                timings.setdefault(f"{name}|{runtime}", []).append((res["latency_ms"], logits))
        for name, runtime, _ in made:
            t = timings[f"{name}|{runtime}"]
            logits = t[0][1]
            rows.append({"method": name, "runtime": runtime, "accuracy": float((logits.argmax(1) == data.y_test).mean()),
                         "p50_ms": float(np.median([x[0]["p50"] for x in t])),
                         "p99_ms": float(np.median([x[0]["p99"] for x in t])),
                         "p50_each_round_ms": [x[0]["p50"] for x in t]})
    print(f"{'method':38s} {'runtime':12s} {'accuracy':>9s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:38s} {r['runtime']:12s} failed: {r['error']}")
        else:
            print(f"{r['method']:38s} {r['runtime']:12s} {100 * r['accuracy']:8.2f}% {r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")
    ok = [r for r in rows if "error" not in r]
    for rt in ("onnxruntime", "openvino"):
        ours = next((r for r in ok if r["runtime"] == rt and r["method"].startswith("edgekd")), None)
        peers = [r for r in ok if r["runtime"] == rt and not r["method"].startswith(("edgekd", "student"))]
        if ours and peers:
            print(f"{rt}: edgekd accuracy - best peer = {100 * (ours['accuracy'] - max(p['accuracy'] for p in peers)):+.2f} pts; "
                  f"fastest peer p50 / edgekd p50 = {min(p['p50_ms'] for p in peers) / ours['p50_ms']:.2f}")
    out = ROOT / "benchmarks" / "results" / "peers.json"
    out.write_text(json.dumps({"rows": rows, "environment": report["environment"], "build": str(build)}, indent=2))
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
