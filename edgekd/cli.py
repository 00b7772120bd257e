"""edgekd's command line: `edgekd build target=cpu-int8 distill.temperature=2`, `edgekd targets`."""

from __future__ import annotations

import sys

import click

from .errors import EdgeKDError, InputError, RecipeError


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, `kill`, a CI timeout), unwound like Ctrl-C: every `finally` removes
    its temporary files, so nothing half-written is left."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _run(debug: bool, fn):
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main else None
    try:
        return fn()
    except EdgeKDError as e:
        if debug:
            raise
        click.echo(f"edgekd: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as e:
        if debug:
            raise
        how = "stopped (SIGTERM)" if isinstance(e, _Terminated) else "interrupted"
        click.echo(f"edgekd: {how}; run the same command again to resume (finished stages are reused)", err=True)
        sys.exit(143 if isinstance(e, _Terminated) else 130)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def need_training_stack(command: str) -> None:
    """On an install without the `train` extra (the runtime alone): say what to install, not a traceback."""
    import importlib.util

    missing = [m for m in ("torch", "onnx", "tqdm", "tomli_w", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise InputError(f"edgekd {command} needs the training stack, which is not installed ({', '.join(missing)}): "
                         "pip install 'edgekd[train]'")


def quiet_libraries() -> None:
    """The terminal shows edgekd's own progress and results: the libraries' notices (torchao's optional
    kernels that do not load on this CPU, Hugging Face download and weight-loading bars, exporter
    warnings) are nothing a user can act on. `--debug` keeps them."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("torchao", "torch.utils._pytree", "transformers", "optimum", "nncf", "onnxruntime", "datasets",
                 "torch.onnx", "torch._dynamo", "torch.export", "sentence_transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


@click.group()
@click.version_option(package_name="edgekd")
def main():
    """Distill a small student from a teacher, quantize it to INT8 under the distillation loss,
    export it to ONNX / OpenVINO, and benchmark it against the teacher."""
    import logging

    # torchao (pulled in by transformers when installed) registers enums that torch then warns about on
    # every import; that is library chatter, not something the user can act on
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("settings", nargs=-1)
@click.option("--target", "target_opt", default=None, help="Target profile (see `edgekd targets`).")
@click.option("--recipe", "recipe_opt", default=None, type=click.Path(dir_okay=False),
              help="Recipe TOML (default: the embedded MNIST example).")
@click.option("--out", default="build", show_default=True, help="Output folder; the build goes to OUT/<target>.")
@click.option("--force", is_flag=True, help="Rebuild every stage instead of reusing cached ones.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def build(settings, target_opt, recipe_opt, out, force, debug):
    """Build a target. SETTINGS are key=value: target=NAME, recipe=PATH, any recipe key
    (distill.temperature=2), or a target profile key (target.iterations=500)."""

    if not debug:
        quiet_libraries()

    def go():
        need_training_stack("build")
        from .overrides import parse_override

        target, recipe_path, overrides, target_overrides = target_opt, recipe_opt, [], []
        for s in settings:
            if s.startswith("--"):
                raise RecipeError(f"unknown option '{s}'; see edgekd build --help")
            key, value = parse_override(s)
            if key == "target":
                target = value
            elif key == "recipe":
                recipe_path = value
            elif key.startswith("target."):
                target_overrides.append(s)
            else:
                overrides.append(s)
        from .pipeline import build as run_build
        from .recipe import apply_overrides, load_recipe
        from .targets import load_target, override_target, target_names

        # Validate everything before anything is written.
        names = target_names() if target == "all" else [t.strip() for t in (target or "cpu-int8").split(",") if t.strip()]
        tgts = [override_target(load_target(n), target_overrides) for n in names]
        recipe = apply_overrides(load_recipe(recipe_path), overrides)
        if target == "all":  # every target this install can run for this task; each one left out says why
            tgts, skipped = _runnable(tgts, recipe)
            for name, why in skipped.items():
                click.echo(f"[target] {name} left out: {why}", err=True)
        rank = _init_distributed()
        log = (lambda m: click.echo(m, err=True)) if rank == 0 else (lambda m: None)
        results, fresh, failed = [], set(), {}
        for tgt in tgts:  # training stages are built once and reused by every target
            if len(tgts) > 1:
                log(f"[target] {tgt.name}")
            try:
                results.append(run_build(recipe, tgt, out_dir=out, force=force, log=log, fresh=fresh))
            except EdgeKDError as e:
                if len(tgts) == 1 or debug:
                    raise
                # one target's converter failing is no reason to withhold the others: they are built,
                # and the command ends with one line naming what failed
                failed[tgt.name] = str(e)
                log(f"[target] {tgt.name} failed: {e}")
        _end_distributed()  # reached only when this rank succeeded (a failed rank leaves; torchrun stops the rest)
        if rank != 0:
            return
        for r in results:
            _summary(r.report)
        if len(results) == 1 and not failed:
            click.echo(str(results[0].report_md))
        elif results:
            from .report import write_combined

            click.echo(str(write_combined(out, {r.report["target"]: r.report for r in results})))
        if failed:
            raise EdgeKDError(f"{len(failed)} of {len(tgts)} targets failed ("
                              + "; ".join(f"{n}: {why}" for n, why in failed.items()) + "); the others were built")

    _run(debug, go)


def _runnable(tgts: list, recipe) -> tuple[list, dict]:
    """The targets this recipe can be built for (edgekd.pipeline.check_buildable: the runtime installed and
    carrying the task's models, a precision the task builds, the INT8 budget honoured); {name: why} for
    the rest."""
    from .errors import InputError
    from .pipeline import check_buildable

    keep, skipped = [], {}
    for t in tgts:
        try:
            check_buildable(recipe, t)
            keep.append(t)
        except InputError as e:
            skipped[t.name] = str(e).removeprefix(f"target '{t.name}': ")
    return keep, skipped


def _init_distributed() -> int:
    """Under `torchrun --nproc-per-node N -m edgekd build ...`: join the process group (gloo on CPU,
    NCCL on GPU) and return this process's rank; 0 otherwise."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    global _DONE
    # The ranks part after training: rank 0 exports, benchmarks and reports (minutes to an hour for a
    # language model) while the others wait to leave together. A process group torn down by one rank
    # while another still holds it can hang at exit, so every rank meets here first, in a group of its
    # own whose timeout outlasts rank 0's work (the default group keeps the usual timeout for training).
    from datetime import timedelta

    _DONE = dist.new_group(backend="gloo", timeout=timedelta(hours=24))
    return dist.get_rank()


_DONE = None


def _end_distributed() -> None:
    import sys as _sys

    global _DONE
    dist = _sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        if _DONE is not None:
            dist.barrier(group=_DONE)
            _DONE = None
        dist.destroy_process_group()


def _summary(report: dict) -> None:
    click.echo(f"\n[{report['target']}]", err=True)
    from .report import quality, task_of
    from .report.markdown import format_size

    task = task_of(report)
    own = task.summary_lines(report)
    if own is not None:
        for line in own:
            click.echo(line, err=True)
        return
    head = task.quality_short()
    click.echo(f"{'model':18s} {head:>7s} {'95% CI':>13s} {'p50 ms':>8s} {'speedup':>8s} {'size':>10s} {'peak RSS':>9s}",
               err=True)
    for name, m in report["models"].items():
        q = m.get("quality_interval")
        ci = f"{task.quality_points(q['low']):5.1f}-{task.quality_points(q['high']):5.1f}%" if q else ""
        click.echo(f"{name:18s} {quality(report, m)[0]:6.2f}% {ci:>13s} {m['latency_ms']['p50']:8.3f} "
                   f"{m['speedup_vs_teacher']:7.2f}x {format_size(m['size_bytes']):>10s} {m['peak_rss_mb']:6.0f} MB",
                   err=True)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@click.option("--baseline", default=None, type=click.Path(dir_okay=False), help="Compare against this model (default: the first).")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the results as JSON.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def bench(args, baseline, json_out, debug):
    """Benchmark exported models (.onnx, .ort, OpenVINO .xml, ExecuTorch .pte, LiteRT .tflite) with the build's harness.
    ARGS: model files, then key=value: target=NAME (defaults for the rest), threads=1,2,
    iterations=N, warmup=N, batch_sizes=1,32, seq_lens=16,64,128 (text models)."""

    def go():
        need_training_stack("bench")
        from pathlib import Path

        from .bench import compare
        from .targets import load_target

        from .bench import bench_settings

        models = [Path(a) for a in args if "=" not in a or Path(a).exists()]
        if not models:
            raise RecipeError("give at least one model file: edgekd bench MODEL.onnx [MODEL2 ...] target=cpu-int8")
        s = bench_settings([a for a in args if "=" in a and not Path(a).exists()])
        t = load_target(s.target)
        rows = compare(models, threads=s.threads or [t.threads], warmup=t.warmup if s.warmup < 0 else s.warmup,
                       iterations=max(10, s.iterations or t.iterations), batch_sizes=s.batch_sizes or t.batch_sizes,
                       baseline=Path(baseline) if baseline else None, seq_lens=s.seq_lens)
        big = max((b for r in rows for b in map(int, r["throughput_per_s"])), default=0)
        click.echo(f"{'model':40s} {'thr':>3s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'std':>7s} "
                   f"{'speedup':>8s} {'RSS MB':>7s} {'+RSS':>6s} {'size kB':>9s}"
                   + (f" {f'items/s @{big}':>13s}" if big else ""))
        for r in rows:
            lat = r["latency_ms"]
            click.echo(f"{Path(r['model']).name[:40]:40s} {r['threads']:3d} {lat['p50']:8.3f} {lat['p90']:8.3f} "
                       f"{lat['p99']:8.3f} {lat['std']:7.3f} {r['speedup_vs_baseline']:7.2f}x {r['peak_rss_mb']:7.0f} "
                       f"{r['rss_increase_mb']:6.0f} {r['size_bytes'] / 1e3:9.1f}"
                       + (f" {r['throughput_per_s'].get(str(big), float('nan')):13.0f}" if big else ""))
            if len(r["latency_by_case"]) > 1:  # a model with a variable axis past the batch, timed at each length
                click.echo("    p50 ms by sequence length: " + ", ".join(
                    f"{s}: {v['p50']:.3f}" for s, v in r["latency_by_case"].items()))
        if json_out:
            import json

            Path(json_out).write_text(json.dumps(rows, indent=2))

    _run(debug, go)


@main.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def report(build_dir, debug):
    """Re-render report.md and report.html of BUILD_DIR from its report.json."""

    def go():
        from pathlib import Path

        from .report import write_reports
        from .report.gate import read_report

        need_training_stack("report")

        src = Path(build_dir) / "report.json"
        data = read_report(Path(build_dir))
        try:
            write_reports(Path(build_dir), data)
        except (KeyError, TypeError) as e:
            raise InputError(f"'{src}' lacks what a report needs ({e!r}); was it written by edgekd build?") from None
        click.echo(str(Path(build_dir) / "report.html"))

    _run(debug, go)


@main.command("verify-arm")
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--cpu", default="cortex-a76", show_default=True, help="Emulated ARM core (never 'max').")
@click.option("--samples", default=None, type=int, help="Verify on the first N test samples (default: all).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def verify_arm(build_dir, cpu, samples, debug):
    """Accuracy of BUILD_DIR's INT8 model on aarch64 onnxruntime kernels under qemu user-mode
    emulation, beside the x86 host's; writes BUILD_DIR/arm_verification.json. No timing."""

    def go():
        from pathlib import Path

        from .verify_arm import verify_build

        r = verify_build(Path(build_dir), cpu=cpu, samples=samples, log=lambda m: click.echo(m, err=True))
        pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
        click.echo(f"{r['model']} on {r['samples']} test samples, onnxruntime {r['onnxruntime']}")
        for k, v in (("x86 accuracy", pct(r["x86_accuracy"])), ("ARM accuracy", pct(r["arm_accuracy"])),
                     ("top-1 agreement", pct(r["top1_agreement_x86_arm"])), ("max |x86 - ARM|", f"{r['max_abs_diff']:.4g}"),
                     ("ARM CPU", f"{r['cpu']} ({r['emulator']})")):
            click.echo(f"  {k:17s} {v}")
        click.echo(f"  ({r['note']})")
        click.echo(str(Path(build_dir) / "arm_verification.json"))

    _run(debug, go)


@main.command()
@click.argument("build_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes, each with its own copy of the model.")
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="Threads per model call (default: the build's).")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Inputs per model call at most: concurrent requests are merged up to the batch size that "
                   "costs the least per input, measured at start.")
@click.option("--max-wait-ms", default=1.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long a free model waits for requests still being read, to batch them.")
@click.option("--max-queue", default=256, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Inputs waiting for the model; past this, 503.")
@click.option("--max-items", default=64, show_default=True, type=click.IntRange(1, 1 << 16), help="Inputs per request.")
@click.option("--max-generations", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Text generation: responses generated at once (each holds a KV cache); past this, 503.")
@click.option("--max-new-tokens", default=1024, show_default=True, type=click.IntRange(1, 1 << 16),
              help="Text generation: the most new tokens a request may ask for.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def serve(build_dir, host, port, workers, threads, max_batch, max_wait_ms, max_queue, max_items, max_generations,
          max_new_tokens, debug):
    """Serve BUILD_DIR's model over HTTP: POST /predict {"inputs": [...]}, GET /health, GET /metadata; a
    text-generation build: POST /generate (streamed with "stream": true), /v1/chat/completions, /v1/completions."""

    def go():
        from pathlib import Path

        from .serve import ServeSpec, serve as run

        spec = ServeSpec(build=str(Path(build_dir).resolve()), threads=threads, max_batch=max_batch,
                         max_wait_ms=max_wait_ms, max_queue=max_queue, max_items=max_items,
                         max_generations=max_generations, max_new_tokens=max_new_tokens)
        run(spec, host=host, port=port, workers=workers, log=lambda m: click.echo(m, err=True))

    _run(debug, go)


@main.command()
@click.argument("section", required=False, default="")
def keys(section):
    """Every recipe key with its type, default and what it does; SECTION (data, teacher, distill ...)
    lists one section. Read from the recipe's spec classes, so it matches this install."""

    def go():
        from .init import format_keys, recipe_keys_doc

        click.echo(format_keys(recipe_keys_doc(), section=section))

    _run(False, go)


@main.command()
@click.argument("data", type=click.Path())
@click.option("--out", default="edgekd.toml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the recipe.")
@click.option("--name", default="", help="The build's name (default: the data's name).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def init(data, out, name, force, debug):
    """Write an annotated recipe for DATA: an image folder (one sub-folder per class, or train/ val/
    test/ of them) or a .csv / .jsonl file of texts (with labels: classification; without: embeddings)."""

    def go():
        from pathlib import Path

        from .init import init_recipe, write_recipe

        path = write_recipe(init_recipe(Path(data), out=Path(out), name=name), Path(out), force=force)
        click.echo(f"wrote {path}; build it with: edgekd build recipe={path} target=cpu-int8")

    _run(debug, go)


@main.command()
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.option("--max-drop", type=float, default=None, help="Quality points the deliverable may lose against the teacher.")
@click.option("--min-speedup", type=float, default=None, help="p50 speedup over the teacher the deliverable must reach.")
@click.option("--max-size-mb", type=float, default=None, help="Largest deliverable file, in MB.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def check(build_dir, max_drop, min_speedup, max_size_mb, debug):
    """A gate for CI: BUILD_DIR's deliverable against the limits; prints ACCEPT (exit 0) or REGRESSION
    (exit 1) with every measurement, from report.json alone."""

    def go():
        from .report.gate import GateSpec, check as run_check, read_report

        spec = GateSpec(max_drop=max_drop, min_speedup=min_speedup, max_size_mb=max_size_mb)
        ok, lines = run_check(read_report(build_dir), spec)
        click.echo("ACCEPT" if ok else "REGRESSION")
        for line in lines:
            click.echo(f"  {line}")
        return ok

    if not _run(debug, go):
        sys.exit(1)


@main.command()
def targets():
    """List the target profiles."""

    def go():
        from .targets import load_target, target_names

        names = target_names()
        width = max(map(len, names))
        for name in names:
            t = load_target(name)
            missing = t.backend.missing()
            click.echo(f"{name:{width}s} {t.runtime:12s} {t.precision:5s} {t.threads} thread(s)  {t.description}"
                       + (f"  [not runnable here: {missing}]" if missing else ""))

    _run(False, go)


if __name__ == "__main__":
    main()
