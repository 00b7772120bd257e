"""Task text-generation on OpenVINO beside onnxruntime: the export stage converts the deliverable and the
teacher to stateful OpenVINO IR folders (`<name>-openvino`, edgekd.openvino_lm) and checks each against
its onnxruntime folder, the benchmark stage measures them as it measures the ONNX folders, and the
report gets their table. OpenVINO is optional here: without it, or for an architecture it cannot
convert, one line says so and the build goes on."""

from __future__ import annotations

import shutil
from pathlib import Path

SUFFIX = "-openvino"
PARITY_TOKENS = 8


def models(deliverable: str) -> list[str]:
    """The deliverable and, for the speed-up on this runtime, the teacher."""
    return list(dict.fromkeys([deliverable, "teacher"]))


def export(ctx, folder: Path, meta: dict, prompts: list[str], floors: dict) -> dict:
    """Convert models(deliverable) under `folder` and compare each with its ONNX folder on the parity
    prompts. `floors`: {name: (max_abs_diff or None, min top-1 agreement)}; a folder outside them is
    removed and reported, not shipped."""
    from ..backends import first_line
    from ..openvino_lm import available, check_parity, convert_lm

    if not available():
        ctx.log("[export] OpenVINO is not installed: the report has no OpenVINO table")
        return {"skipped": "openvino is not installed (pip install openvino)"}
    tok = ctx.extra["tokenizer"]
    ids = [tok(p)["input_ids"] for p in prompts]
    out: dict = {"models": {}, "failed": {}, "folders": []}
    for name in models(meta["deliverable"]):
        dst = folder / f"{name}{SUFFIX}"
        ctx.log(f"[export] {name} to OpenVINO")
        try:
            m = convert_lm(folder / name, dst)
            p = m["parity"] = check_parity(dst, folder / name, ids, new_tokens=PARITY_TOKENS)
            diff, agree = floors[name]
            if (diff is not None and p["max_abs_diff"] > diff) or p["top1_agreement"] < agree:
                raise RuntimeError(f"it does not reproduce onnxruntime (logits max |diff| {p['max_abs_diff']:.3g}, "
                                   f"top-1 agreement {p['top1_agreement']:.3f})")
        except Exception as e:  # noqa: BLE001 - an architecture OpenVINO cannot take must not stop the build
            shutil.rmtree(dst, ignore_errors=True)
            out["failed"][name] = first_line(e)
            ctx.log(f"[export] {name} is not on OpenVINO: {first_line(e)}")
            continue
        out["models"][name] = m
        if name == meta["deliverable"]:
            out["folders"].append(dst.name)  # shipped in the build folder beside the ONNX deliverable
    return out


def benchmark(ctx, export_dir: Path, names: list[str], reference: Path, timing: dict, *, repeats: int,
              eval_ids: list) -> dict:
    """Each converted folder of `names` that the export stage wrote, on OpenVINO: speed in alternation
    (bench_lms with `timing`), quality with bench_lm(speed=False)."""
    from ..backends import first_line
    from ..errors import EdgeKDError
    from ..lm_bench import bench_lm, bench_lms
    from ._lm_export import with_quality

    out: dict = {"models": {}, "failed": {}}
    folders = {n: export_dir / f"{n}{SUFFIX}" for n in names if (export_dir / f"{n}{SUFFIX}").is_dir()}
    ctx.log(f"[benchmark] speed of {', '.join(folders)} on OpenVINO, in alternation")
    try:
        speed = bench_lms(folders, runtime="openvino", repeats=repeats, **timing)
    except EdgeKDError as e:  # one model that fails must not take the other down: each alone
        ctx.log(f"[benchmark] OpenVINO in alternation failed ({first_line(e)}); each model alone")
        speed = {}
    for name, folder in folders.items():
        try:
            out["models"][name] = (
                with_quality(speed[name], bench_lm(folder, runtime="openvino", reference=reference, speed=False,
                                                   repeats=1, eval_ids=eval_ids, **timing))
                if name in speed else bench_lm(folder, runtime="openvino", reference=reference, repeats=repeats,
                                               eval_ids=eval_ids, **timing))
        except EdgeKDError as e:
            out["failed"][name] = first_line(e)
            ctx.log(f"[benchmark] {name} on OpenVINO failed: {first_line(e)}")
    return out


def assemble(bench: dict, export: dict, onnx_models: dict) -> dict:
    """report.json's runtimes.openvino: each model's measures with its ratios to onnxruntime's and to
    the OpenVINO teacher's."""
    ov, conv = bench.get("openvino") or {}, export.get("openvino") or {}
    found = ov.get("models", {})
    t = found.get("teacher")
    models_ = {}
    for n, b in found.items():
        o = onnx_models[n]
        m = {**b, "precision": o.get("precision"), "parity": conv.get("models", {}).get(n, {}).get("parity"),
             "file": f"{n}{SUFFIX}/openvino_model.xml",
             "decode_vs_onnxruntime": b["decode_tok_s"]["mean"] / o["decode_tok_s"]["mean"]}
        first = _first(b)
        if first and first in o.get("ttft_ms", {}):
            m["ttft_vs_onnxruntime"] = b["ttft_ms"][first]["mean"] / o["ttft_ms"][first]["mean"]
        if t:
            m["decode_speedup_vs_teacher"] = b["decode_tok_s"]["mean"] / t["decode_tok_s"]["mean"]
        models_[n] = m
    failed = {**conv.get("failed", {}), **ov.get("failed", {})}
    return {"models": models_, "failed": failed, "skipped": conv.get("skipped"),
            "conversion": {n: {k: v for k, v in m.items() if k != "parity"} for n, m in conv.get("models", {}).items()}}


def _first(b: dict) -> str | None:
    return str(min(int(k) for k in b["ttft_ms"])) if b.get("ttft_ms") else None


def lines(r: dict, labels: dict) -> list[str]:
    """The report's "On OpenVINO" section, or nothing when the build has no OpenVINO part."""
    from ._lm_report import _f, _mb

    ov = (r.get("runtimes") or {}).get("openvino")
    if not ov:
        return []
    out = ["", "## On OpenVINO", ""]
    if ov.get("skipped"):
        return out + [f"Not measured: {ov['skipped']}."]
    ms = ov["models"]
    threads = r["target_profile"]["threads"]
    if ms:
        first = _first(next(iter(ms.values())))
        out += [(f"The ONNX folders converted to stateful OpenVINO IR (the cache kept in the infer request, the "
                 "attention fused; quantized weights read as onnxruntime runs them) and measured the same way in "
                 f"a fresh OpenVINO process at {threads} thread(s) (CPU plugin, f32 inference and KV cache). "
                 f"TTFT at {first} prompt tokens; top-1 agreement with the onnxruntime teacher's top tokens."), "",
                ("| model | size | tg tok/s | vs onnxruntime | TTFT ms | vs onnxruntime | token p50/p90 ms | peak RSS "
                 "| perplexity | top-1 agree |"),
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, m in ms.items():
            out.append(f"| {labels.get(n, n)} | {_mb(m['size_bytes'])} | {m['decode_tok_s']['mean']:.1f} ± "
                       f"{m['decode_tok_s']['std']:.1f} | {m['decode_vs_onnxruntime']:.2f}x | "
                       f"{_f(m['ttft_ms'].get(first, {}).get('mean'))} | {_f(m.get('ttft_vs_onnxruntime'), '{:.2f}x')} | "
                       f"{m['per_token_ms']['p50']:.1f} / {m['per_token_ms']['p90']:.1f} | {m['peak_rss_mb']:.0f} MB | "
                       f"{_f(m.get('perplexity'), '{:.2f}')} | {_f(m.get('top1_agreement'), '{:.3f}')} |")
        if "teacher" in ms:
            out += [""] + [f"- {labels.get(n, n)}: {m['decode_speedup_vs_teacher']:.1f}x the OpenVINO teacher's "
                           "decode speed" for n, m in ms.items() if n != "teacher"]
        out += [""] + [f"- {labels.get(n, n)} against onnxruntime: logits max |diff| {p['max_abs_diff']:.2g}, next-token "
                       f"top-1 agreement {p['top1_agreement']:.3f} over {p['positions']} prompt positions; greedy "
                       f"{p['new_tokens']} tokens identical on {p['greedy_exact']} of {p['prompts']} prompts"
                       for n, m in ms.items() if (p := m.get("parity"))]
    out += [f"- {labels.get(n, n)}: not on OpenVINO: {why}" for n, why in ov["failed"].items()]
    return out
