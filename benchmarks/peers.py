"""edgekd's quantization-aware-distilled INT8 student next to the post-training quantizers a user
would reach for without edgekd, all starting from the same distilled FP32 student and the same
calibration images (the recipe's `quantize.calibration` first training images):

- onnxruntime `quantize_static` (QDQ, per-channel, MinMax, otherwise defaults) -> ONNX Runtime;
- NNCF post-training quantization of the OpenVINO model -> OpenVINO;
- Intel Neural Compressor 3.x static PTQ (PT2E: torch.export, X86InductorQuantizer defaults,
  needs torchao on torch >= 2.11) -> ONNX (dynamo exporter, onnxscript) -> ONNX Runtime, so it is
  timed on the same runtime as edgekd's and onnxruntime's INT8 graphs.

Goal: edgekd's INT8 at least as accurate as every peer's, and no slower than the fastest peer on the
same runtime. Accuracy on the build's test split from the runtime's outputs (with the standard error of
the paired difference); p50 latency at batch 1, 1 thread, each model in a fresh process (edgekd's
harness), models interleaved over rounds and the median round kept. On a shared 2-core host, p50s of
INT8 graphs that run the same kernels op for op differ by up to ~30% from run to run: a gap inside
that band is reported as a tie, never as a winner. `kernels` lists the ops onnxruntime runs after its
graph optimizations (or OpenVINO's precision per Convolution/FullyConnected layer), so identical
graphs can be told from different ones.

A text build (e.g. `--build build-minilm/cpu-int8` from examples/minilm-embed) gets the routes a user
of a Hugging Face encoder reaches for, from the same distilled FP32 student: onnxruntime
`quantize_dynamic`, optimum's `ORTQuantizer` with its `avx512_vnni` and `arm64` presets, NNCF PTQ
(transformer preset) on OpenVINO, and onnxruntime's offline transformer fusion pass on edgekd's INT8
and on the FP32 graph; scored by cosine fidelity and top-10 neighbour overlap to the teacher's
runtime outputs on the test split, timed at every sequence length of the build's benchmark, written
to benchmarks/results/peers-text.json.

Needs a finished build (default build/cpu-int8: `edgekd build target=cpu-int8`) and
`pip install -e '.[peers]'`. One run; one table; results and environment in
benchmarks/results/peers.json (peers-text.json for a text build).

    python benchmarks/peers.py [--build build/cpu-int8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run-to-run spread of p50 between op-for-op identical INT8 graphs on this shared host: smaller gaps are noise.
NOISE = 0.30


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
    """INC 3.x PT2E static PTQ with its defaults (X86InductorQuantizer: INT8 per-channel symmetric
    weights, UINT8 per-tensor asymmetric activations), then the dynamo ONNX exporter: the converted
    graph holds quantize/dequantize ops that it writes as QDQ, which onnxruntime fuses into QLinearConv."""
    import logging
    import warnings

    import onnx
    import torch
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare
    from torchao.quantization.pt2e import move_exported_model_to_eval

    logging.getLogger("neural_compressor").setLevel(logging.WARNING)  # its per-pass INFO lines

    x = torch.from_numpy(calib[:2])  # batch 2: torch.export specializes a size-1 dimension
    exported = export(student.eval(), example_inputs=(x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    prepared = prepare(exported, StaticQuantConfig())
    with torch.no_grad():
        for i in range(0, len(calib), 32):
            prepared(torch.from_numpy(calib[i:i + 32]))
    q = move_exported_model_to_eval(convert(prepared))  # an exported graph: never .eval()
    with warnings.catch_warnings():
        # its `training` flag stays set, though its ops are in eval mode (BatchNorm folded in prepare)
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        torch.onnx.export(q, (x,), str(out), dynamo=True, input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    onnx.save(onnx.load(str(out)), str(out), save_as_external_data=False)  # weights inline, one file
    Path(str(out) + ".data").unlink(missing_ok=True)
    return out


# --- text students: the quantizers a user of a Hugging Face encoder reaches for ------------------------

def ort_dynamic(fp32: Path, out: Path) -> Path:
    """onnxruntime's dynamic INT8 quantization with its defaults (INT8 weights; activations quantized
    at run time per tensor): the one-line route for transformers."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(fp32), str(out))
    return out


def optimum_dynamic(fp32: Path, hf: Path, out_dir: Path, preset: str) -> Path:
    """optimum's ORTQuantizer with its AutoQuantizationConfig preset (`avx512_vnni` or `arm64`),
    dynamic and per-channel as optimum's documentation shows for transformers, on a copy of the
    build's hf/ folder that holds the FP32 student."""
    import shutil

    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    src = out_dir / f"src-{preset}"
    shutil.copytree(hf, src, ignore=shutil.ignore_patterns("*.onnx"))
    shutil.copy(fp32, src / "model.onnx")
    config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=True)
    ORTQuantizer.from_pretrained(src, file_name="model.onnx").quantize(save_dir=out_dir / preset,
                                                                      quantization_config=config)
    return out_dir / preset / "model_quantized.onnx"


def nncf_text(fp32: Path, out: Path, feeds: list[dict]) -> Path:
    """NNCF post-training quantization of the OpenVINO model with its transformer preset
    (model_type=TRANSFORMER: the attention's MatMuls and the linears, smooth quant off by default)."""
    import nncf
    import openvino as ov

    model = ov.convert_model(str(fp32))
    names = [i.get_any_name() for i in model.inputs]
    data = [{k: v for k, v in f.items() if k in names} for f in feeds]
    q = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data))
    ov.save_model(q, str(out))
    return out


def openvino_ir(src: Path, out: Path) -> Path:
    from edgekd.backends.openvino_ir import make as to_openvino

    to_openvino(src, out)
    return out


def fused(src: Path, out: Path, *, heads: int, hidden: int) -> Path:
    """onnxruntime's offline transformer optimizer (onnxruntime.transformers.optimizer, what optimum's
    ORTOptimizer runs): attention, LayerNorm, GELU and bias fusions for a BERT graph."""
    from onnxruntime.transformers.optimizer import optimize_model

    m = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
    m.save_model_to_file(str(out))
    return out


def text_rows(build: Path, report: dict, rounds: int) -> tuple[list[dict], list[dict], dict]:
    """Every INT8 route for the build's text student, one run: fidelity to the teacher on the test
    split (runtime outputs), p50 at each sequence length of the build's benchmark, size. edgekd's
    OpenVINO row is what a `cpu-int8-openvino` build of the same recipe ships when one sits beside the
    build (its scheme timed on OpenVINO itself), else the onnxruntime graph converted."""
    from edgekd.bench import benchmark
    from edgekd.data import load_data
    from edgekd.recipe import load_recipe
    from edgekd.targets import load_target
    from edgekd.tasks import Context, get
    from edgekd.tasks.text import _row_feeds, neighbour_overlap, row_cosines

    recipe = load_recipe(build / "recipe.lock.toml")
    task = get(recipe.task)
    ctx = Context(recipe, load_target("cpu-int8"), "cpu", lambda *_: None,
                  data=load_data(recipe.data, seed=recipe.seed, base=recipe.base_dir))
    task.prepare(ctx)
    inputs = task.bench_inputs(ctx)
    lens = [int(s) for s in inputs.cases]
    calib = _row_feeds({k: v[: recipe.quantize.calibration] for k, v in ctx.extra["tokens"]["train"].items()})
    cfg = json.loads((build / "hf" / "config.json").read_text())
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    fp32 = build / "student-fp32.onnx"
    ov_build = build.parent / "cpu-int8-openvino"
    ov_build = ov_build if (ov_build / "student-int8.xml").exists() else None
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)

        def feeds_for(path: Path) -> list[dict]:  # token_type_ids where the graph takes them
            import onnx

            names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
            return [{**f, "token_type_ids": np.zeros_like(f["input_ids"])} if "token_type_ids" in names else f
                    for f in calib]

        candidates = [
            ("teacher FP32 (reference)", "onnxruntime", lambda: build / "teacher.onnx"),
            ("student FP32 (reference)", "onnxruntime", lambda: fp32),
            ("edgekd QAT-distilled INT8", "onnxruntime", lambda: build / "student-int8.onnx"),
            ("edgekd INT8 + transformer fusion", "onnxruntime",
             lambda: fused(build / "student-int8.onnx", d / "edgekd-fused.onnx", heads=heads, hidden=hidden)),
            ("student FP32 + transformer fusion", "onnxruntime",
             lambda: fused(fp32, d / "fp32-fused.onnx", heads=heads, hidden=hidden)),
            ("onnxruntime quantize_dynamic", "onnxruntime", lambda: ort_dynamic(fp32, d / "dyn.onnx")),
            ("optimum ORTQuantizer avx512_vnni", "onnxruntime",
             lambda: optimum_dynamic(fp32, build / "hf", d, "avx512_vnni")),
            ("optimum ORTQuantizer arm64", "onnxruntime", lambda: optimum_dynamic(fp32, build / "hf", d, "arm64")),
            ("edgekd QAT-distilled INT8", "openvino",
             lambda: ov_build / "student-int8.xml" if ov_build else openvino_ir(build / "student-int8.onnx", d / "edgekd.xml")),
            *([("student FP32 (reference)", "openvino", lambda: ov_build / "student-fp32.xml")] if ov_build else []),
            ("NNCF PTQ", "openvino", lambda: nncf_text(fp32, d / "nncf.xml", feeds_for(fp32))),
        ]
        made = []
        for name, runtime, make in candidates:
            t = time.perf_counter()
            try:
                path = Path(make())
                made.append((name, runtime, path, time.perf_counter() - t, kernels(path, runtime)))
            except Exception as e:  # noqa: BLE001 - a peer that fails is a result to report, not a crash
                rows.append({"method": name, "runtime": runtime, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"})
                traceback.print_exc()
        timings: dict[str, list] = {}
        for _ in range(rounds):
            for name, runtime, path, _, _ in made:
                res, out = benchmark(path, inputs=inputs, threads=1, warmup=20, iterations=200, batch_sizes=[1])
                timings.setdefault(f"{name}|{runtime}", []).append((res["latency_by_seq"], out))
        teacher = timings["teacher FP32 (reference)|onnxruntime"][0][1]
        for name, runtime, path, seconds, kern in made:
            t = timings[f"{name}|{runtime}"]
            out = t[0][1]
            cos = row_cosines(out, teacher)
            size = sum(f.stat().st_size for f in ([path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path])
                       if f.exists())
            rows.append({"method": name, "runtime": runtime, "fidelity_cosine": float(cos.mean()),
                         "neighbour_overlap_at_10": neighbour_overlap(out, teacher, k=10),
                         "p50_ms": {str(s): float(np.median([x[0][str(s)]["p50"] for x in t])) for s in lens},
                         "p50_each_round_ms": {str(s): [x[0][str(s)]["p50"] for x in t] for s in lens},
                         "size_mb": size / 1e6, "kernels": kern, "make_seconds": round(seconds, 1), "_cos": cos})
    ok = [r for r in rows if "error" not in r]
    ours_by_rt = {r["runtime"]: r for r in ok if r["method"] == "edgekd QAT-distilled INT8"}
    for r in ok:  # the paired difference of per-text cosines to edgekd's INT8 on the same runtime
        ours = ours_by_rt.get(r["runtime"])
        if ours is not None and ours is not r:
            diff = ours["_cos"] - r["_cos"]
            r["edgekd_minus_this_cos"] = float(diff.mean())
            r["edgekd_minus_this_se_cos"] = float(diff.std(ddof=1) / np.sqrt(len(diff)))
    for r in ok:
        del r["_cos"]
    longest = str(lens[-1])
    print(f"\n{'method':36s} {'runtime':12s} {'cosine':>7s} {'overlap':>7s} "
          + " ".join(f"{'p50@' + str(s):>8s}" for s in lens) + f" {'MB':>6s}  kernels")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:36s} {r['runtime']:12s} failed: {r['error']}")
            continue
        print(f"{r['method']:36s} {r['runtime']:12s} {r['fidelity_cosine']:7.4f} {r['neighbour_overlap_at_10']:7.3f} "
              + " ".join(f"{r['p50_ms'][str(s)]:8.2f}" for s in lens) + f" {r['size_mb']:6.1f}  {_fmt_kernels(r['kernels'])}")
    verdicts = []
    for rt in ("onnxruntime", "openvino"):
        ours = ours_by_rt.get(rt)
        peers = [r for r in ok if r["runtime"] == rt and not r["method"].startswith(("edgekd", "student", "teacher"))]
        if not (ours and peers):
            continue
        best = max(peers, key=lambda p: p["fidelity_cosine"])
        fastest = min(peers, key=lambda p: p["p50_ms"][longest])
        gap, se = best["edgekd_minus_this_cos"], best["edgekd_minus_this_se_cos"]
        ratio = ours["p50_ms"][longest] / fastest["p50_ms"][longest]
        # the goal holds at every length: edgekd against the fastest peer at that length
        by_len = {str(s): ours["p50_ms"][str(s)] / min(p["p50_ms"][str(s)] for p in peers) for s in lens}
        v = {"runtime": rt, "best_peer": best["method"], "cosine_minus_best_peer": gap, "cosine_se": se,
             "accuracy_ok": gap >= -2 * se, "fastest_peer": fastest["method"],
             f"p50_edgekd_over_fastest_peer_at_{longest}": ratio, "p50_edgekd_over_fastest_peer_by_length": by_len,
             "latency_ok": all(x <= 1 + NOISE for x in by_len.values()), "edgekd_from": str(ov_build if rt == "openvino" and ov_build else build)}
        verdicts.append(v)
        print(f"{rt}: cosine {gap:+.4f} (±{se:.4f}) vs the best peer ({best['method']}); p50 over the fastest peer's "
              + ", ".join(f"{x:.2f}x at {s}" for s, x in by_len.items()))
    return rows, verdicts, {"sequence_lengths": lens, "test_texts": int(len(inputs.order)),
                            "calibration_texts": len(calib)}


def kernels(path: Path, runtime: str) -> dict[str, int]:
    """What actually runs: onnxruntime's op types after graph optimization, or OpenVINO's runtime
    precision per Convolution/FullyConnected/MatMul layer."""
    if runtime == "onnxruntime":
        from edgekd.quantize import optimized_op_types

        return optimized_op_types(path)
    import openvino as ov

    counts: dict[str, int] = {}
    for op in ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if layer in ("Convolution", "FullyConnected", "MatMul"):
            key = f"{layer}:{rt['runtimePrecision'].astype(str) if 'runtimePrecision' in rt else '?'}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("nncf", "neural-compressor", "torchao", "onnxscript", "optimum", "optimum-onnx", "onnxruntime",
                "openvino"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def verdict(ours: dict, peers: list[dict], rt: str) -> dict:
    """The goal, per runtime: accuracy against the best peer, latency against the fastest peer,
    where a gap inside the noise band is a tie."""
    best = max(peers, key=lambda p: p["accuracy"])
    fastest = min(peers, key=lambda p: p["p50_ms"])
    acc_gap, acc_se = best["edgekd_minus_this_pts"], best["edgekd_minus_this_se_pts"]
    if abs(acc_gap) <= 2 * acc_se:
        accuracy = f"tie: {acc_gap:+.1f} pts vs the best peer, within 2 SE ({2 * acc_se:.1f} pts) of the paired difference"
    else:
        accuracy = f"{'more' if acc_gap > 0 else 'less'} accurate: {acc_gap:+.1f} pts vs the best peer (beyond 2 SE, {2 * acc_se:.1f} pts)"
    gap = ours["p50_ms"] / fastest["p50_ms"] - 1  # > 0: edgekd slower
    same = ours["kernels"] == fastest["kernels"]
    if abs(gap) <= NOISE:
        latency = f"tie: inside the ±{100 * NOISE:.0f}% run-to-run noise of this shared host, no winner claimed"
    else:
        latency = f"{'slower' if gap > 0 else 'faster'} by {100 * abs(gap):.0f}% (beyond the ±{100 * NOISE:.0f}% noise band)"
    if same:
        latency += "; same kernels op for op"
    return {"runtime": rt, "accuracy_minus_best_peer_pts": acc_gap, "accuracy_minus_best_peer_se_pts": acc_se,
            "best_peer": best["method"], "accuracy": accuracy, "accuracy_ok": acc_gap >= -2 * acc_se,
            "fastest_peer": fastest["method"], "p50_edgekd_over_fastest_peer": ours["p50_ms"] / fastest["p50_ms"],
            "same_kernels_as_fastest_peer": same, "latency": latency,
            "latency_ok": gap <= NOISE}


def write_results(name: str, quality_goal: str, rows: list[dict], verdicts: list[dict], info: dict, *, report: dict,
                  build: Path, rounds: int, load_start) -> None:
    """Print the goal's verdict and write benchmarks/results/<name>.json with the build's environment."""
    goal = bool(verdicts) and all(v["accuracy_ok"] and v["latency_ok"] for v in verdicts) and \
        not any("error" in r for r in rows)
    print(f"goal (every peer ran; {quality_goal} beyond 2 SE, not slower than the fastest beyond the noise band): "
          f"{'met' if goal else 'NOT met'}")
    env = dict(report["environment"])
    env["versions"] = {**env.get("versions", {}), **versions()}
    env["loadavg_start_end"] = [round(load_start[0], 2), round(os.getloadavg()[0], 2)]
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.write_text(json.dumps({"rows": rows, "verdicts": verdicts, "goal_met": goal, "noise_band": NOISE,
                               "rounds": rounds, **info, "environment": env,
                               "build": os.path.relpath(build.resolve(), ROOT)}, indent=2))
    print(f"written to {out.relative_to(ROOT)}")


def _fmt_kernels(k: dict) -> str:
    return " ".join(f"{op}x{n}" for op, n in k.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build" / "cpu-int8"))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import torch

    from edgekd.bench import BenchInputs, benchmark, rows_in_batches
    from edgekd.data import load_data
    from edgekd.backends.openvino_ir import make as to_openvino
    from edgekd.models import build_arch
    from edgekd.recipe import load_recipe

    build = Path(args.build)
    report = json.loads((build / "report.json").read_text())
    if "sequence_lengths" in report:  # a text build
        load_start = os.getloadavg()
        rows, verdicts, info = text_rows(build, report, args.rounds)
        write_results("peers-text", "edgekd's cosine not below any peer's", rows, verdicts, info, report=report,
                      build=build, rounds=args.rounds, load_start=load_start)
        return
    recipe = load_recipe(build / "recipe.lock.toml")
    data = load_data(recipe.data, seed=recipe.seed, base=recipe.base_dir)
    calib = data.x_train[: recipe.quantize.calibration]
    # the distilled FP32 student before QAT: the distill stage's checkpoint, and its FP32 export
    cache = build.parent / ".cache" / report["stages"]["distill"]["cache"]
    student = build_arch(recipe.student.model, in_channels=data.input_shape[0], num_classes=data.num_classes)
    student.load_state_dict(torch.load(cache / "model.pt", weights_only=True))
    fp32 = build / "student-fp32.onnx"
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        to_openvino(build / "student-int8.onnx", d / "edgekd-int8.xml")
        candidates = [("edgekd QAT-distilled INT8", "onnxruntime", lambda: build / "student-int8.onnx"),
                      ("edgekd QAT-distilled INT8", "openvino", lambda: d / "edgekd-int8.xml"),
                      ("student FP32 (reference)", "onnxruntime", lambda: fp32),
                      ("onnxruntime quantize_static", "onnxruntime", lambda: ort_static(fp32, d / "ort.onnx", calib)),
                      ("NNCF PTQ", "openvino", lambda: nncf_ptq(fp32, d / "nncf.xml", calib)),
                      ("Intel Neural Compressor PTQ (PT2E)", "onnxruntime", lambda: inc_ptq(student, d / "inc.onnx", calib))]
        made = []
        for name, runtime, make in candidates:
            t = time.perf_counter()
            try:
                path = make()
                made.append((name, runtime, path, time.perf_counter() - t, kernels(path, runtime)))
            except Exception as e:  # noqa: BLE001 - a peer that fails is a result to report, not a crash
                rows.append({"method": name, "runtime": runtime, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:150]}"})
                traceback.print_exc()
        # Rounds, models interleaved within each, fresh process per run: p50 is the median over rounds,
        # so that drift of this shared machine hits every model alike.
        timings: dict[str, list] = {}
        for _ in range(args.rounds):
            for name, runtime, path, _, _ in made:
                res, logits = benchmark(path, inputs=BenchInputs(eval=rows_in_batches(data.x_test),
                                                                  cases={"1": {"x": data.x_test[:1]}}),
                                        threads=1, warmup=200, iterations=2000, batch_sizes=[1])
                timings.setdefault(f"{name}|{runtime}", []).append((res["latency_ms"], logits))
        for name, runtime, _, seconds, kern in made:
            t = timings[f"{name}|{runtime}"]
            correct = t[0][1].argmax(1) == data.y_test
            p50s = [x[0]["p50"] for x in t]
            rows.append({"method": name, "runtime": runtime, "accuracy": float(correct.mean()),
                         "p50_ms": float(np.median(p50s)),
                         "p99_ms": float(np.median([x[0]["p99"] for x in t])),
                         "p50_each_round_ms": p50s, "kernels": kern,
                         "make_seconds": round(seconds, 1), "_correct": correct})
    ok = [r for r in rows if "error" not in r]
    ours_by_rt = {r["runtime"]: r for r in ok if r["method"].startswith("edgekd")}
    for r in ok:  # standard error of the paired accuracy difference to edgekd's INT8 on the same runtime
        ours = ours_by_rt.get(r["runtime"])
        if ours is not None and ours is not r:
            diff = ours["_correct"].astype(float) - r["_correct"].astype(float)
            r["edgekd_minus_this_pts"] = 100 * float(diff.mean())
            r["edgekd_minus_this_se_pts"] = 100 * float(diff.std(ddof=1) / np.sqrt(len(diff)))
    for r in ok:
        del r["_correct"]
    order = {"onnxruntime": 0, "openvino": 1}
    rows.sort(key=lambda r: (order.get(r["runtime"], 2), "error" in r, not r["method"].startswith("edgekd"),
                             r["method"].startswith("student")))
    print(f"\n{'method':36s} {'runtime':12s} {'accuracy':>9s} {'vs edgekd':>14s} {'p50 ms':>7s} {'p50 range':>13s}  kernels")
    for r in rows:
        if "error" in r:
            print(f"{r['method']:36s} {r['runtime']:12s} failed: {r['error']}")
            continue
        vs = (f"{-r['edgekd_minus_this_pts']:+.1f}±{r['edgekd_minus_this_se_pts']:.1f}" if "edgekd_minus_this_pts" in r else "")
        rng = f"{min(r['p50_each_round_ms']):.3f}-{max(r['p50_each_round_ms']):.3f}"
        print(f"{r['method']:36s} {r['runtime']:12s} {100 * r['accuracy']:8.1f}% {vs:>14s} {r['p50_ms']:7.3f} {rng:>13s}  "
              f"{_fmt_kernels(r['kernels'])}")
    print(f"('vs edgekd': this row's accuracy minus edgekd's on the same runtime, pts ± 1 SE of the paired difference; "
          f"p50 gaps under {100 * NOISE:.0f}% are run-to-run noise on this shared host)")
    verdicts = []
    for rt in ("onnxruntime", "openvino"):
        ours = ours_by_rt.get(rt)
        peers = [r for r in ok if r["runtime"] == rt and not r["method"].startswith(("edgekd", "student"))]
        if ours and peers:
            v = verdict(ours, peers, rt)
            verdicts.append(v)
            print(f"{rt}: accuracy {v['accuracy']} ({v['best_peer']}); p50 {v['p50_edgekd_over_fastest_peer']:.2f}x "
                  f"the fastest peer's ({v['fastest_peer']}): {v['latency']}")
    write_results("peers", "edgekd not less accurate than any peer", rows, verdicts,
                  {"test_samples": len(data.y_test), "calibration_samples": len(calib)}, report=report, build=build,
                  rounds=args.rounds, load_start=load_start)


if __name__ == "__main__":
    main()
