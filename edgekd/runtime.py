"""The loader apps embed: run a build's model on raw inputs, with nothing but its folder.

    model = edgekd.runtime.load("build/cpu-int8")      # or the path of its manifest.json
    model.predict(["digit.png", uint8_28x28_array])    # [{"label": "7", "probability": 0.98}, ...]
    model.predict(["a sentence", "another"])           # text-embedding: float32 (N, D)
    lm = edgekd.runtime.load("build/cpu-int4")         # text-generation: a Generator
    lm.generate("def add(a, b): ...", max_new_tokens=64)   # the response, as text
    for piece in lm.stream([{"role": "user", "content": "Hi"}]): print(piece, end="")

Everything comes from manifest.json, validated against its schema (edgekd.manifest): the model file
(checked against its sha256), the runtime and its session settings and thread count, every
preprocessing step as data, the labels. The image steps run the very functions the build's data
sources ran (edgekd.data._images), so the model sees bit-identical inputs; text is tokenized with
`tokenizers` on the build's tokenizer.json, as transformers' fast tokenizer did at build time.

A text-generation build's prompt is written as the build wrote its prompts (edgekd.tasks._lm_data): the
instruction, a blank line and the prompt, as the user's turn of the tokenizer's chat template (rendered
with jinja2 as transformers renders it) when the build used one.

Needs numpy and onnxruntime (or openvino), `tokenizers` for text models, jinja2 for chat templates and
Pillow for image files or resizing; it never imports torch, transformers or click (a test checks), so
`pip install 'edgekd[runtime]'` is enough to run a model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import InputError
from .manifest import read_manifest

__all__ = ["Generator", "Model", "TextStream", "load"]


def load(path, *, threads: int | None = None, verify: bool = True) -> Model | Generator:
    """The model of a build folder (or of a manifest.json path): a Generator for a text-generation
    build, else a Model. `threads` overrides the build's thread count; `verify=False` skips the sha256
    check of the model files."""
    path = Path(path)
    manifest = read_manifest(path)
    folder = path if path.is_dir() else path.parent
    # a causal LM's preprocessing is a prompt format: it generates; every other build predicts
    cls = Generator if manifest["preprocessing"]["kind"] == "causal-lm" else Model
    return cls(manifest, folder, threads=threads, verify=verify)


def _check_files(manifest: dict, folder: Path, *, verify: bool) -> None:
    """Every file the manifest names exists and, with `verify`, matches its sha256."""
    from .artifacts import sha256_file

    files = [(manifest["model"], manifest["sha256"])] + [(c["file"], c["sha256"]) for c in manifest["companions"]]
    for name, digest in files:
        f = folder / name
        if not f.is_file():
            raise InputError(f"'{f}' named by manifest.json is missing; copy the whole build folder")
        if verify and sha256_file(f) != digest:
            raise InputError(f"'{f}' does not match the sha256 in manifest.json: the file was changed or "
                             "damaged; copy it again from the build folder")


class Model:
    """A loaded build: `predict` for raw inputs, `run` for the model's raw outputs, `prepare` and
    `forward` for the two halves of `run` (a server validates requests with `prepare` alone)."""

    def __init__(self, manifest: dict, folder: Path, *, threads: int | None = None, verify: bool = True):
        from . import backends

        self.manifest, self.folder = manifest, Path(folder)
        self.task: str = manifest["task"]
        self.labels: list[str] = list(manifest["labels"])
        self.kind: str = manifest["preprocessing"]["kind"]
        self.threads = int(threads or manifest["threads"])
        _check_files(manifest, self.folder, verify=verify)
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
        tok = _tokenizer(folder / step["folder"] / step["file"])  # padded here, per group of similar length
        tok.enable_truncation(step["max_length"], strategy="longest_first", direction=step["truncation_side"])
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


class Generator:
    """A loaded text-generation build: `generate` for a response as text, `stream` for its pieces as they
    are generated, `prompt_ids` for the tokens the model reads. `context` is the build's data.max_length:
    a prompt must leave room in it for a response, as the build's own prompts did."""

    def __init__(self, manifest: dict, folder: Path, *, threads: int | None = None, verify: bool = True):
        from .lm_runtime import CausalLM

        self.manifest, self.folder = manifest, Path(folder)
        self.task: str = manifest["task"]
        self.kind: str = manifest["preprocessing"]["kind"]
        self.threads = int(threads or manifest["threads"])
        _check_files(manifest, self.folder, verify=verify)
        pre = manifest["preprocessing"]
        self.instruction: str = pre["instruction"]
        self.context: int = pre["max_length"]
        self.lm = CausalLM((self.folder / manifest["model"]).parent, threads=self.threads)
        self.eos_ids: tuple[int, ...] = tuple(sorted({pre["eos_token_id"], *self.lm.eos_ids}))
        tok_path = self.folder / pre["tokenizer"]
        self.tokenizer = _tokenizer(tok_path)
        # compiled at load, so a build whose template cannot render fails here, not on the first request
        self._chat = _ChatTemplate(tok_path.parent) if pre["chat_template"] else None

    @property
    def chat(self) -> bool:
        """Whether prompts are written with the tokenizer's chat template."""
        return self._chat is not None

    def prompt_ids(self, prompt) -> list[int]:
        """The tokens the model reads for `prompt`: a string, written as the build wrote its prompts (the
        instruction, a blank line, the prompt; as the user's turn of the chat template with the
        assistant's turn opened when the build used one), or a list of {"role", "content"} messages
        (no instruction added). Not checked against `context` (stream and generate check)."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise InputError("the prompt is empty; give text")
            text = f"{self.instruction}\n\n{prompt}" if self.instruction else prompt
            messages = [{"role": "user", "content": text}]
        else:
            messages = _check_messages(prompt)
        if self._chat is not None:  # the template writes the special tokens itself, as transformers tokenizes it
            return self.tokenizer.encode(self._chat.render(messages), add_special_tokens=False).ids
        if len(messages) != 1 or messages[0]["role"] != "user":
            raise InputError("this build was distilled without a chat template, so it reads one prompt: give a "
                             "string or a single user message")
        return self.tokenizer.encode(messages[0]["content"] + "\n", add_special_tokens=True).ids

    def stream(self, prompt, *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, stop=(), seed: int = 0) -> TextStream:
        """The response to `prompt` (see prompt_ids) in pieces, one per new token, as the model writes
        them: greedy at temperature 0, else sampled (top_k, then top_p, seeded by `seed`). It ends at
        eos, at max_new_tokens, or where a `stop` string appears (the text is cut before it). The
        arguments are checked now; the model runs as the stream is read."""
        ids = self.prompt_ids(prompt)
        if len(ids) >= self.context:
            raise InputError(f"the prompt is {len(ids)} tokens, at most {self.context - 1} (the model was distilled "
                             f"on {self.context}-token sequences, prompt and response: data.max_length); shorten the prompt")
        stops = _check_stop(stop)
        _check_whole("max_new_tokens", max_new_tokens, 1)
        _check_whole("top_k", top_k, 0)
        _check_whole("seed", seed, 0)
        for name, v in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{name} must be a number, got {v!r}")
        tokens = self.lm.stream(ids, max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
                                top_p=float(top_p), seed=seed, stop_ids=self.eos_ids)
        return TextStream(tokens, self.decode, prompt_tokens=len(ids), max_new_tokens=max_new_tokens,
                          eos_ids=self.eos_ids, stop=stops)

    def generate(self, prompt, *, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, stop=(), seed: int = 0) -> str:
        """The response to `prompt` as text (see stream)."""
        return "".join(self.stream(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                   top_k=top_k, stop=stop, seed=seed))

    def decode(self, ids) -> str:
        """Token ids -> text, special tokens left out (as transformers' decode with skip_special_tokens)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


class TextStream:
    """The pieces of one response, one per new token (empty while a character's bytes or a possible stop
    string are incomplete). Once the last piece is out: `finish_reason` is "stop" (eos or a stop string)
    or "length" (max_new_tokens); `tokens` counts the new tokens, `prompt_tokens` the prompt's, `text`
    is the pieces joined. `close()` ends the generation early."""

    def __init__(self, tokens: Iterator[int], decode, *, prompt_tokens: int, max_new_tokens: int,
                 eos_ids: tuple[int, ...], stop: tuple[str, ...]):
        self.prompt_tokens, self.tokens, self.text = prompt_tokens, 0, ""
        self.finish_reason: str | None = None
        self._tokens = tokens
        self._pieces = self._run(decode, max_new_tokens, set(eos_ids), stop)

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()
        self._close_tokens()

    def _close_tokens(self) -> None:
        if close := getattr(self._tokens, "close", None):  # a generator: its cache is freed now
            close()

    def _run(self, decode, max_new_tokens: int, eos: set, stop: tuple[str, ...]) -> Iterator[str]:
        new: list[int] = []
        try:
            for token in self._tokens:
                new.append(token)
                self.tokens += 1
                # the whole response decoded again: a character split over tokens comes out whole
                full = decode(new)
                cut = min((i for i in (full.find(s) for s in stop) if i >= 0), default=-1)
                if cut >= 0:
                    full, reason = full[:cut], "stop"
                else:
                    reason = "stop" if token in eos else "length" if self.tokens == max_new_tokens else None
                end = len(full) if reason else len(full) - _held(full, stop)
                piece = full[len(self.text):end] if end > len(self.text) else ""
                self.text += piece
                self.finish_reason = reason
                yield piece
                if reason:
                    return
        finally:
            self._close_tokens()


def _held(text: str, stop: tuple[str, ...]) -> int:
    """How many characters at the end of `text` must wait for the next token: an incomplete character
    (decoded as U+FFFD until its last byte comes) or the beginning of a stop string."""
    whole = text.rstrip("\ufffd")
    held = 0  # of `whole`: the longest end that begins a stop string (the incomplete character may go on with it)
    for s in stop:
        for k in range(min(len(s) - 1, len(whole)), held, -1):
            if whole.endswith(s[:k]):
                held = k
                break
    return len(text) - len(whole) + held


def _check_stop(stop) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else stop
    try:
        stops = tuple(stops)
    except TypeError:
        raise InputError(f"stop must be a string or a list of strings, got {type(stop).__name__}") from None
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InputError(f"stop strings must be non-empty strings, got {s!r}")
    return stops


def _check_whole(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")


def _check_messages(messages) -> list[dict]:
    """A chat as a list of {"role": str, "content": str}."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"give a prompt string or a non-empty list of {{\"role\", \"content\"}} messages, "
                         f"got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"message {i} must be {{\"role\": a string, \"content\": a string}}, got {str(m)[:80]}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _tokenizer(path: Path):
    """tokenizer.json with no truncation or padding of its own: transformers' fast tokenizer turns both off
    for a call that asks for neither, as the build's calls did."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise InputError("text models need the tokenizers package: pip install 'edgekd[runtime]'") from None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises untyped errors for missing or bad files
        raise InputError(f"cannot load the tokenizer '{path}' ({str(e).splitlines()[0][:120]}); copy the whole "
                         "build folder, its model folders included") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class _ChatTemplate:
    """A tokenizer folder's chat template, rendered as transformers' apply_chat_template renders it: a
    sandboxed jinja2 environment with trim_blocks and lstrip_blocks, its `raise_exception`, `tojson`
    and `strftime_now`, and the special tokens (bos_token, eos_token, ...) in the context."""

    def __init__(self, folder: Path):
        from .lm_runtime import _read_json

        config = _read_json(folder / "tokenizer_config.json")
        file = folder / "chat_template.jinja"  # transformers reads this file first, as its saving writes it
        source = file.read_text(encoding="utf-8") if file.is_file() else config.get("chat_template")
        if isinstance(source, list):  # named templates: transformers uses "default"
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
        if not isinstance(source, str) or not source.strip():
            raise InputError(f"the build writes prompts with a chat template, but '{folder}' has none (no "
                             "chat_template.jinja or tokenizer_config.json chat_template); copy the whole build folder")
        legacy = _read_json(folder / "special_tokens_map.json")
        self.specials: dict = {}
        for name in _SPECIAL:
            v = config.get(name, legacy.get(name))
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str) and v:
                self.specials[name] = v
        extra = config.get("additional_special_tokens", legacy.get("additional_special_tokens")) or []
        if extra := [t.get("content") if isinstance(t, dict) else t for t in extra]:
            self.specials["additional_special_tokens"] = extra
        if isinstance(config.get("extra_special_tokens"), dict):
            self.specials.update({k: v.get("content") if isinstance(v, dict) else v
                                  for k, v in config["extra_special_tokens"].items()})
        self.template = _compile(source, folder)

    def render(self, messages: list[dict]) -> str:
        """The chat with the assistant's turn opened (add_generation_prompt)."""
        import jinja2

        try:
            return self.template.render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                        **self.specials)
        except jinja2.TemplateError as e:  # raise_exception in the template: it refuses this chat
            raise InputError(f"the chat template refuses these messages ({str(e).splitlines()[0][:160]}); "
                             "give the roles and order this model's template expects") from None
        except Exception as e:  # noqa: BLE001 - a template can fail in any Python way on content it did not expect
            raise InputError(f"the chat template failed on these messages ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:120] if str(e) else ''}); give plain user/assistant messages") from None


def _compile(source: str, folder: Path):
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise InputError("this build's prompts use a chat template, which needs jinja2: "
                         "pip install 'edgekd[runtime]'") from None
    from datetime import datetime

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}`: marks an assistant's text for training masks; renders its body."""
        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise InputError(f"the chat template in '{folder}' does not compile ({str(e).splitlines()[0][:120]}); "
                         "fix it or re-export the model") from None
