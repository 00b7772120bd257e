"""The build folder a user gets: build/<target>/ with every model file, manifest.json (what an app needs
to run the deliverable; schema in edgekd/schemas, validated here before it is written), recipe.lock.toml, report.json/md/html. Written in a temporary folder and
swapped into place, so a failed build never leaves half a folder."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from . import __version__
from .artifacts import MODEL_NAMES, deliverable, model_file, sha256_file
from .backends import companion_files
from .errors import InputError
from .manifest import SCHEMA_VERSION, validate_manifest

# folders of the export stage that travel with the models (a text model's tokenizer and config)
FOLDERS = ("hf",)


def write_build(out_dir: Path, target, recipe, report: dict, st_export, manifest_io: dict) -> Path:
    from .recipe import recipe_toml
    from .report import write_reports

    from ._stages import remove_stale_tmp

    remove_stale_tmp(out_dir)  # what a killed build left beside the build folders
    final = out_dir / target.name
    tmp = out_dir / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in st_export.meta.get("model_names") or MODEL_NAMES:
            src = st_export.dir / model_file(name, target)
            if not src.exists() and (st_export.dir / name).is_dir():  # a model folder (a causal LM: graph,
                shutil.copytree(st_export.dir / name, tmp / name)  # config, tokenizer), loadable as it is
                continue
            for f in (src, *companion_files(src)):
                shutil.copy2(f, tmp / f.name)
        for folder in (*FOLDERS, *st_export.meta.get("folders", ())):  # and a task's own (an OpenVINO copy)
            if (st_export.dir / folder).is_dir():
                shutil.copytree(st_export.dir / folder, tmp / folder)
        main = model_file(deliverable(target), target)
        if not (tmp / main).exists():
            main = f"{deliverable(target)}/model.onnx"
        if main.endswith(".onnx") and (tmp / "hf").is_dir():
            # hf/ becomes a standard optimum folder of the deliverable: ORTModelFor*.from_pretrained(hf)
            # and transformers.pipeline load it with no edgekd code. A hard link costs no disk space.
            try:
                os.link(tmp / main, tmp / "hf" / "model.onnx")
            except OSError:
                shutil.copy2(tmp / main, tmp / "hf" / "model.onnx")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model": main,
            "sha256": sha256_file(tmp / main),
            "companions": [{"file": f.name, "sha256": sha256_file(f)} for f in companion_files(tmp / main)],
            "runtime": target.runtime,
            "runtime_options": target.backend.options,
            "format": target.format,
            "precision": target.precision,
            "task": recipe.task,
            **manifest_io,
            "threads": target.threads,
            "edgekd": __version__,
        }
        try:  # what apps read is checked against its published schema before anyone can read it
            validate_manifest(manifest, where=f"the manifest of build '{target.name}'")
        except InputError as e:
            raise RuntimeError(f"edgekd wrote a manifest its schema refuses (a bug in edgekd): {e}") from None
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        lock = replace(recipe.with_absolute_paths(), quantize=replace(recipe.quantize,
                                                reduce_range="true" if report.get("int8", {}).get("reduce_range") else "false"))
        (tmp / "recipe.lock.toml").write_text(
            f"# edgekd {__version__}: the resolved recipe of build '{target.name}'.\n"
            f"# Reproduce: edgekd build recipe=recipe.lock.toml target={target.name}\n" + recipe_toml(lock))
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        write_reports(tmp, report)
        old = out_dir / f".{target.name}.old{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
