"""The loader apps embed: run a build's model on raw inputs, with nothing but its folder.

    model = edgekd.runtime.load("build/cpu-int8")      # or the path of its manifest.json
    model.predict(["digit.png", uint8_28x28_array])    # [{"label": "7", "probability": 0.98}, ...]
    model.predict(["a sentence", "another"])           # text-embedding: float32 (N, D)

Everything comes from manifest.json, validated against its schema (edgekd.manifest): the model file
(checked against its sha256), the runtime and its session settings and thread count, every
preprocessing step as data, the labels. The image steps run the very functions the build's data
sources ran (edgekd.data._images), so the model sees bit-identical inputs; text is tokenized with
`tokenizers` on the build's tokenizer.json, as transformers' fast tokenizer did at build time.

Needs numpy and onnxruntime (or openvino), `tokenizers` for text models and Pillow for image files or
resizing; it never imports torch, transformers or click (a test checks), so `pip install
'edgekd[runtime]'` is enough to run a model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .manifest import read_manifest

__all__ = ["load", "Model"]


def load(path, *, threads: int | None = None, verify: bool = True) -> "Model":
    """The model of a build folder (or of a manifest.json path). `threads` overrides the build's
    thread count; `verify=False` skips the sha256 check of the model files."""
    path = Path(path)
    manifest = read_manifest(path)
    folder = path if path.is_dir() else path.parent
    return Model(manifest, folder, threads=threads, verify=verify)


class Model:
    """A loaded build: `predict` for raw inputs, `run` for the model's raw outputs, `prepare` and
    `forward` for the two halves of `run` (a server validates requests with `prepare` alone)."""

    def __init__(self, manifest: dict, folder: Path, *, threads: int | None = None, verify: bool = True):
        from . import backends
        from .artifacts import sha256_file

        self.manifest, self.folder = manifest, Path(folder)
        self.task: str = manifest["task"]
        self.labels: list[str] = list(manifest["labels"])
        self.kind: str = manifest["preprocessing"]["kind"]
        self.threads = int(threads or manifest["threads"])
        files = [(manifest["model"], manifest["sha256"])] + [(c["file"], c["sha256"]) for c in manifest["companions"]]
        for name, digest in files:
            f = self.folder / name
            if not f.is_file():
                raise InputError(f"'{f}' named by manifest.json is missing; copy the whole build folder")
            if verify and sha256_file(f) != digest:
                raise InputError(f"'{f}' does not match the sha256 in manifest.json: the file was changed or "
                                 "damaged; copy it again from the build folder")
        self._prep = _ImagePrep(manifest) if self.kind == "image" else _TextPrep(manifest, self.folder)
        backend = backends.get(manifest["format"])
        try:
            self._run = backend.load(str(self.folder / manifest["model"]), threads=self.threads)
        except ModuleNotFoundError as e:
            raise InputError(f"this build runs on {backend.runtime}, which is not installed ({e.name}): "
                             f"pip install {backend.install}") from None

    @property
    def classifies(self) -> bool:
        return bool(self.labels)

    def prepare(self, inputs) -> list:
        """Check and decode every raw input of a batch: images -> float32 (C, H, W), texts -> str.
        Raises InputError naming the first bad input."""
        if isinstance(inputs, (str, bytes, os.PathLike)) or hasattr(inputs, "mode"):
            raise InputError("predict takes a batch of inputs: wrap one input in a list, e.g. predict([x])")
        try:
            items = list(inputs)
        except TypeError:
            raise InputError(f"predict takes a batch (a list of inputs), got {type(inputs).__name__}") from None
        if not items:
            raise InputError("the batch is empty; give at least one input")
        return [self._prep.one(x, i) for i, x in enumerate(items)]

    def forward(self, items: list) -> np.ndarray:
        """Prepared items -> the model's output, float32 (N, K) class scores or (N, D) embeddings, in
        input order (texts run in groups of similar length: see _TextPrep.batches)."""
        out = None
        for rows, feed in self._prep.batches(items):
            y = np.asarray(self._run(feed), dtype=np.float32)
            if out is None:
                out = np.empty((len(items), *y.shape[1:]), np.float32)
            out[rows] = y
        return out

    def run(self, inputs) -> np.ndarray:
        """Raw inputs -> the model's output (what the build's report scored)."""
        return self.forward(self.prepare(inputs))

    def predict(self, inputs, *, top_k: int = 1):
        """Classification: one {"label", "probability"} per input (and "top": the top_k labels with
        their probabilities when top_k > 1). Embedding: float32 (N, D) embeddings."""
        return self.postprocess(self.run(inputs), top_k=top_k)

    def postprocess(self, out: np.ndarray, *, top_k: int = 1):
        """The model's output (N, K) or (N, D) -> predict's result."""
        if not self.classifies:
            return out
        z = out.astype(np.float64)
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)  # softmax (N, K)
        k = max(1, min(int(top_k), p.shape[1]))
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        preds = []
        for row, idx in zip(p, order):
            d = {"label": self.labels[idx[0]], "probability": float(row[idx[0]])}
            if k > 1:
                d["top"] = [{"label": self.labels[j], "probability": float(row[j])} for j in idx]
            preds.append(d)
        return preds


class _ImagePrep:
    """Raw image -> the model's (C, H, W) float32: color conversion, then the manifest's steps in order."""

    def __init__(self, manifest: dict):
        pre = manifest["preprocessing"]
        self.color, self.steps = pre["color"], pre["steps"]
        self.shape = tuple(pre["input_shape"])

    def one(self, x, i: int) -> np.ndarray:
        from .data._images import _convert, _crop, _image, _resize

        where = f"input {i}"
        if isinstance(x, (bytes, bytearray, str, os.PathLike)):
            x = _open_image(x, where)
        if hasattr(x, "mode"):  # a PIL image: Pillow converts its own modes, as the image sources did
            if self.color == "stored":
                raise InputError(f"{where}: this model takes {self.shape[0]}-channel arrays, not images in files; "
                                 "give an (H, W, C) array")
            a = _image(x, self.color, where)
        else:
            a = self._array(x, where)
            a = _convert(a, self.color, where)
        for step in self.steps:
            op = step["op"]
            if op == "resize":
                a = _resize(a, step["shorter_side"], longer=step.get("longer_side", "round"))
            elif op == "center_crop":
                h, w = step["size"]
                if a.shape[0] < h or a.shape[1] < w:
                    raise InputError(f"{where} is {a.shape[1]}x{a.shape[0]}, smaller than the model's {w}x{h} crop; "
                                     f"give an image at least {w}x{h}")
                a = _crop(a, h, where)
            elif op == "scale":
                if a.dtype == np.uint8:  # a table of the 256 values, exactly as the build computed them
                    a = (np.arange(256) * step["factor"]).astype(np.float32)[a]
                else:
                    a = (a.astype(np.float64) * step["factor"]).astype(np.float32)
            elif op == "normalize":
                mean, std = np.array(step["mean"], np.float32), np.array(step["std"], np.float32)
                a = (a.astype(np.float32) - mean) / std  # (H, W, C) - (C,): float32 arithmetic, as in the build
            elif op == "layout":
                a = a.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.shape != self.shape:
            c, h, w = self.shape
            what = f"{w}x{h} images" + (f" of {c} channels" if self.color == "stored" else "")
            raise InputError(f"{where} becomes {a.shape} (C, H, W) after the manifest's preprocessing, but the model "
                             f"takes {self.shape}; give {what}")
        return a

    def _array(self, x, where: str) -> np.ndarray:
        """An (H, W) or (H, W, C) array of pixel values; whole numbers 0-255 become uint8 as the image
        sources store them."""
        try:
            a = np.asarray(x)
        except ValueError:
            raise InputError(f"{where} is a ragged nested list; give an (H, W) or (H, W, C) grid of numbers") from None
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise InputError(f"{where} is {type(x).__name__} of {a.dtype}, not an image; give a file path, a PIL image "
                             "or an (H, W) / (H, W, C) array of numbers")
        if a.ndim not in (2, 3) or 0 in a.shape:
            raise InputError(f"{where} has shape {a.shape}; give one image as an (H, W) or (H, W, C) array")
        if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
            if a.size and (a.min() < 0 or a.max() > 255):
                raise InputError(f"{where} has pixel values {a.min()}..{a.max()}; give whole numbers 0-255")
            a = a.astype(np.uint8)
        elif not np.isfinite(a).all():
            raise InputError(f"{where} holds NaN or infinite values; give finite pixel values")
        a = a[..., None] if a.ndim == 2 else a
        c, want = a.shape[2], self.shape[0]
        if self.color == "stored" and c != want:
            raise InputError(f"{where} has {c} channel(s), the model takes {want}; give (H, W, {want}) arrays")
        if self.color != "stored" and c not in (1, 3, 4):
            raise InputError(f"{where} has {c} channels (shape {a.shape}); give grayscale (H, W) or (H, W, 1), "
                             "RGB (H, W, 3) or RGBA (H, W, 4)")
        return a

    def batches(self, items: list) -> list[tuple[list[int], np.ndarray]]:
        return [(list(range(len(items))), np.stack(items))]  # (N, C, H, W)


def _open_image(x, where: str):
    """A decoded PIL image from a path or the bytes of an image file."""
    import io

    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError("reading image files needs Pillow: pip install 'edgekd[runtime]'") from None
    name = "the bytes" if isinstance(x, (bytes, bytearray)) else f"'{x}'"
    try:
        im = Image.open(io.BytesIO(x) if isinstance(x, (bytes, bytearray)) else x)
        im.load()  # decode now: a truncated file fails here, not later
    except FileNotFoundError:
        raise InputError(f"{where}: {name} does not exist; give the path of an image file") from None
    except IsADirectoryError:
        raise InputError(f"{where}: {name} is a folder; give the path of an image file") from None
    except Image.DecompressionBombError:
        raise InputError(f"{where}: {name} is too large to decode ({Image.MAX_IMAGE_PIXELS} pixels at most); "
                         "give a smaller image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        why = "no image format recognised" if isinstance(e, UnidentifiedImageError) else str(e).splitlines()[0][:80]
        raise InputError(f"{where}: {name} is not an image Pillow can decode ({why}); "
                         "give a PNG, JPEG or another Pillow format") from None
    return im


class _TextPrep:
    """Text -> {input_ids, attention_mask[, token_type_ids]} (N, S) int64: the build's tokenizer.json,
    configured as the manifest's tokenize step says (transformers' fast tokenizer does the same calls)."""

    def __init__(self, manifest: dict, folder: Path):
        step = manifest["preprocessing"]["steps"][0]
        if step["file"] is None:
            raise InputError("this build's tokenizer has no tokenizer.json (a slow-only tokenizer); the runtime needs "
                             "a fast tokenizer: rebuild with a teacher whose folder has tokenizer.json")
        path = folder / step["folder"] / step["file"]
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise InputError("text models need the tokenizers package: pip install 'edgekd[runtime]'") from None
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises untyped errors for missing or bad files
            raise InputError(f"cannot load the tokenizer '{path}' ({str(e).splitlines()[0][:120]}); copy the "
                             "whole build folder, hf/ included") from None
        tok.enable_truncation(step["max_length"], strategy="longest_first", direction=step["truncation_side"])
        tok.no_padding()  # padded here, per group of similar length (batches)
        self.tok, self.step, self.feeds = tok, step, step["feeds"]

    def one(self, x, i: int) -> str:
        if not isinstance(x, str):
            raise InputError(f"input {i} is {type(x).__name__}, not a string; give text")
        if not x.strip():
            raise InputError(f"input {i} is an empty string; give text with at least one word")
        return x

    def encode(self, items: list[str]) -> list[list[int]]:
        """Token ids of each text: special tokens added, cut to max_length."""
        return [e.ids for e in self.tok.encode_batch(items, add_special_tokens=self.step["add_special_tokens"])]

    def pad(self, rows: list[list[int]]) -> dict[str, np.ndarray]:
        """Ids -> the model's feed, (N, S) int64 each, S = the longest row, padded with pad_id on padding_side
        (mask 0 there)."""
        s, left = max(map(len, rows)), self.step["padding_side"] == "left"
        ids = np.full((len(rows), s), self.step["pad_id"], np.int64)
        mask = np.zeros((len(rows), s), np.int64)
        for i, r in enumerate(rows):
            cols = slice(s - len(r), s) if left else slice(0, len(r))
            ids[i, cols], mask[i, cols] = r, 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.feeds:
            feed["token_type_ids"] = np.zeros_like(ids)  # one segment, as the build fed it
        return {k: v for k, v in feed.items() if k in self.feeds}

    def batches(self, items: list[str]) -> list[tuple[list[int], dict[str, np.ndarray]]]:
        """(row indices, feed) per group of texts of similar length. A padded token costs as much as a
        real one, and a batch of short texts padded to one long text can cost more than running them
        one by one; a group grows (shortest texts first) while its padded tokens stay within
        _PAD_SLACK times its real tokens."""
        rows = self.encode(items)
        groups, cur, real = [], [], 0
        for i in sorted(range(len(rows)), key=lambda i: len(rows[i])):
            n = len(rows[i])
            if cur and (len(cur) + 1) * n > _PAD_SLACK * (real + n):
                groups.append(cur)
                cur, real = [], 0
            cur.append(i)
            real += n
        groups.append(cur)
        return [(g, self.pad([rows[i] for i in g])) for g in groups]


_PAD_SLACK = 1.25
