"""A build with a transformers image student ships hf/, a standard optimum folder: optimum's
ORTModelForImageClassification and transformers.pipeline load the INT8 student from it with no edgekd
code, and give what edgekd's own runtime gives on the same images."""
import json
import os

import numpy as np
import pytest

pytest.importorskip("optimum.onnxruntime")

TEACHER = ["teacher.model=hf-config:resnet", "teacher.epochs=4", "teacher.batch_size=8",
           'teacher.config={"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1], "layer_type": "basic"}']
# a ViT: its INT8 class-token concat once ran at batch 1 only, and benchmarks run batch 32
STUDENT = ["student.model=hf-config:vit", 'student.config={"hidden_size": 16, "num_hidden_layers": 1, '
           '"num_attention_heads": 2, "intermediate_size": 32, "patch_size": 4}']
FAST = ["data.n_train=0", "data.n_val=0", "data.n_test=0", "distill.epochs=6", "distill.batch_size=8", "distill.views=2",
        "quantize.epochs=1", "quantize.calibration=32", "export.int8_min_agreement=0.9", "target.iterations=10",
        "target.warmup=2"]
CLASSES = ["blue", "green", "red"]
# Landscape, portrait and square images, resized to a shorter side of 24 and cropped to 24 x 24; 37 x 25
# scales its longer side to 35.52, which both cut to 35.
SIZES = [(40, 30), (30, 40), (48, 36), (36, 36), (37, 25)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Noisy images whose strongest colour channel is their class, under train/, val/ and test/."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8), ("test", 4)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                w, h = SIZES[i % len(SIZES)]
                a = rng.integers(0, 140, (h, w, 3))
                a[..., 2 - c] += 110  # blue, green, red: channel 2, 1, 0
                Image.fromarray(a.astype(np.uint8)).save(root / split / name / f"{i}.png")
    return root


def test_hf_folder_loads_with_optimum_and_the_pipeline(folder, tmp_path):
    from click.testing import CliRunner
    from optimum.onnxruntime import ORTModelForImageClassification
    from PIL import Image
    from transformers import AutoImageProcessor, pipeline

    import edgekd.runtime
    from edgekd.cli import main

    # int8_layers = all: INT8 ships even where it does not pay (edgekd.payoff), so its exporter is known
    res = CliRunner().invoke(main, ["build", "target=cpu-int8", "--out", str(tmp_path), "data.source=image-folder",
                                    f"data.path={folder}", "data.resize=24", "data.crop=24", *TEACHER, *STUDENT, *FAST,
                                    "quantize.int8_layers=all"])
    assert res.exit_code == 0, res.output
    build = tmp_path / "cpu-int8"
    r = json.loads((build / "report.json").read_text())
    ex = r["exporters"]
    assert {n: e["exporter"] for n, e in ex.items()} == {"teacher": "optimum", "student-baseline": "optimum",
                                                          "student-fp32": "optimum", "student-int8": "torch.onnx"}
    note = r["hf_folder"]["note"]  # sized alike: only the alpha difference remains
    assert r["hf_folder"]["image_processor"] == "BitImageProcessor" and "alpha" in note and "int(long" not in note
    assert "- Exported with optimum (teacher, student-baseline, student-fp32); torch.onnx (student-int8" in \
        (build / "report.md").read_text()
    manifest = json.loads((build / "manifest.json").read_text())
    assert manifest["inputs"][0]["name"] == "pixel_values" and manifest["output"]["name"] == "logits"
    hf = build / "hf"
    assert os.path.samefile(hf / "model.onnx", build / "student-int8.onnx")  # a hard link of the deliverable

    images = [Image.open(p).convert("RGB") for p in sorted((folder / "test").rglob("*.png"))]
    processor = AutoImageProcessor.from_pretrained(hf)
    ortm = ORTModelForImageClassification.from_pretrained(hf)
    assert ortm.config.id2label == dict(enumerate(CLASSES))
    runtime = edgekd.runtime.load(build)
    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    # the processor repeats the build's preprocessing bit for bit at these sizes
    assert np.array_equal(pixels, np.stack(runtime.prepare(images)))
    # one image per call, as the pipeline runs them: the same file, input and runtime, so the logits
    # differ at most by the float summation order of another thread count (1e-5)
    ours = np.concatenate([runtime.run([im]) for im in images])
    theirs = np.concatenate([np.asarray(ortm(pixel_values=pixels[i:i + 1]).logits) for i in range(len(images))])
    assert np.abs(theirs - ours).max() < 1e-5
    clf = pipeline("image-classification", model=ortm, image_processor=processor)
    top = [p[0] for p in clf(images)]
    want = [runtime.predict([im])[0] for im in images]
    assert len({p["label"] for p in want}) > 1  # a student that tells the classes apart: the labels say something
    assert [p["label"] for p in top] == [p["label"] for p in want]
    assert np.allclose([p["score"] for p in top], [p["probability"] for p in want], atol=1e-5)


@pytest.mark.parametrize("color", ["rgb", "grayscale"])
def test_image_processor_repeats_the_steps_or_says_why_not(color):
    """Images used at the size they come (no resize or crop step), and grayscale input, which no
    transformers image processor produces."""
    from PIL import Image

    from edgekd.export_hf import image_processor
    from edgekd.runtime import _ImagePrep

    c = 3 if color == "rgb" else 1
    pre = {"kind": "image", "raw": "an image file", "color": color, "input_shape": [c, 20, 24],
           "steps": [{"op": "scale", "factor": 1 / 255.0},
                     {"op": "normalize", "mean": [0.3, 0.4, 0.5][:c], "std": [0.2, 0.25, 0.3][:c]},
                     {"op": "layout", "order": "NCHW"}]}
    processor, note = image_processor(pre)
    if color == "grayscale":
        assert processor is None and "grayscale input" in note and "\n" not in note
        return
    assert "int(long" not in note  # nothing is resized: only the alpha difference remains
    # a manifest written before resize steps said how they size the longer side rounded it: the note says so
    legacy = {**pre, "steps": [{"op": "resize", "shorter_side": 20, "interpolation": "bilinear"}, *pre["steps"]]}
    assert "int(long * R / short)" in image_processor(legacy)[1]
    assert "int(long" not in image_processor({**pre, "steps": [{**legacy["steps"][0], "longer_side": "floor"},
                                                              *pre["steps"]]})[1]
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).convert("P")
    got = processor(images=[im], return_tensors="np")["pixel_values"][0]
    assert np.array_equal(got, _ImagePrep({"preprocessing": pre}).one(im, 0))
