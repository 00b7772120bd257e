"""Text data for the text tasks: a real English corpus derived offline from the Python standard
library's docstrings, and labeled CSV / JSONL files. Splits are by document, so no paragraph of a
held-out document is seen in training."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .registry import Registry

text_sources: Registry = Registry("text data source", error=InputError)


@dataclass
class TextSplits:
    train: list[str]
    val: list[str]
    test: list[str]
    y_train: np.ndarray | None = None  # int64 labels (classification) or None (embedding)
    y_val: np.ndarray | None = None
    y_test: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)
    origin: str = ""  # where the texts come from, for the report


# Folders of the standard library that are tests, demos or vendored code, not documentation.
_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "turtledemo", "ensurepip", "__phello__",
         "pydoc_data", "config-3.11-x86_64-linux-gnu"}


def _paragraphs(doc: str) -> list[str]:
    """English paragraphs of one docstring: doctest and code lines removed, whitespace collapsed."""
    out = []
    for para in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in para.splitlines()]
        if any(ln.startswith((">>>", "...", "$ ", "%")) for ln in lines):
            continue
        text = " ".join(ln for ln in lines if ln)
        letters = sum(c.isalpha() or c == " " for c in text)
        # prose, not signatures or tables: long enough, mostly letters, several words
        if 40 <= len(text) <= 600 and letters / len(text) > 0.85 and len(text.split()) >= 6:
            out.append(text)
    return out


def _comment_blocks(src: str) -> list[str]:
    """Runs of `#` comments on consecutive lines, one text per run (the `#` and indentation removed)."""
    import io
    import tokenize

    blocks, block, last = [], [], -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type != tokenize.COMMENT:
                continue
            line = tok.string.lstrip("#").strip()
            if tok.start[0] == last + 1 and line:
                block.append(line)
            else:  # a gap, or an empty `#` line, ends the block
                if block:
                    blocks.append("\n".join(block))
                block = [line] if line else []
            last = tok.start[0]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    if block:
        blocks.append("\n".join(block))
    return blocks


def _docstrings(src: str) -> list[str]:
    """The docstrings of a module's source: module, classes, functions (parsed with `ast`)."""
    import ast

    try:
        tree = ast.parse(src)
    except SyntaxError:
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    nodes = (n for n in ast.walk(tree) if isinstance(n, kinds))
    return [d for d in map(ast.get_docstring, nodes) if d]


def stdlib_documents(root: Path | None = None, *, kind: str = "docstrings") -> dict[str, list[str]]:
    """{module path: English paragraphs} for the standard library at `root` (this interpreter's):
    its docstrings (kind "docstrings", parsed with `ast`) or its comment blocks (kind "comments", read
    with `tokenize`). Sources are parsed, never imported or executed."""
    import sysconfig

    extract = _comment_blocks if kind == "comments" else _docstrings
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP & set(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            src = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        paras = [p for text in extract(src) for p in _paragraphs(text)]
        if paras:
            docs[str(rel.with_suffix("")).replace("/", ".")] = list(dict.fromkeys(paras))  # dedupe, keep order
    return docs


def _bucket(doc: str) -> int:
    """A stable bucket 0..99 per document (sha1, not Python's salted hash)."""
    return int(hashlib.sha1(doc.encode()).hexdigest()[:8], 16) % 100


@text_sources.register("stdlib-docstrings")
def stdlib_docstrings(spec, *, seed: int) -> TextSplits:
    """Unlabeled English paragraphs from the standard library's docstrings; documents (modules) go
    10% to test, 10% to validation, 80% to training; each split is then sampled down to its size.
    With data.train_comments, the comment blocks of the training modules are added to the training
    split (all of them, beyond n_train): more text for the teacher to label, from modules no held-out
    paragraph comes from; validation and test stay docstrings."""
    import sys

    docs = stdlib_documents()
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    seen: set[str] = set()
    for name, paras in docs.items():
        b = _bucket(name)
        split = "test" if b < 10 else "val" if b < 20 else "train"
        for p in paras:
            if p not in seen:  # the same paragraph in two modules would leak across splits
                seen.add(p)
                parts[split].append(p)
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", spec.n_train), ("val", spec.n_val), ("test", spec.n_test)):
        texts = parts[split]
        if len(texts) < n:
            raise InputError(f"data.n_{split} = {n} but the standard library gives only {len(texts)} {split} "
                             f"paragraphs; lower data.n_{split}")
        out[split] = [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))]
    origin = (f"docstring paragraphs of the Python {sys.version.split()[0]} standard library "
              f"({len(docs)} modules, split by module)")
    if spec.train_comments:
        comments = [p for name, paras in stdlib_documents(kind="comments").items() if _bucket(name) >= 20
                    for p in paras if p not in seen and not seen.add(p)]
        out["train"] += comments
        origin += f"; training adds {len(comments)} comment paragraphs of the training modules"
    return TextSplits(out["train"], out["val"], out["test"], origin=origin)


def _read_rows(spec, path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        raise InputError(f"data.path '{path}' does not exist; give a {spec.source.upper()} file of text,label rows")
    try:
        if spec.source == "csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{i} is not a JSON object ({e.msg}); one object per line") from None
    except UnicodeDecodeError:
        raise InputError(f"data.path '{path}' is not UTF-8 text") from None
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or spec.text_field not in r or spec.label_field not in r:
            raise InputError(f"{path} row {i} has no '{spec.text_field}' and '{spec.label_field}' fields; "
                             "set data.text_field / data.label_field to the file's column names")
    return rows


def labeled_file(spec, *, seed: int, base: Path) -> TextSplits:
    """(text, label) rows from a CSV or JSONL file, shuffled with `seed` and split n_train / n_val / n_test.
    Labels are sorted by name, so their indices do not depend on row order."""
    p = Path(spec.path).expanduser()
    path = p if p.is_absolute() else base / p
    rows = _read_rows(spec, path)
    need = spec.n_train + spec.n_val + spec.n_test
    if need > len(rows):
        raise InputError(f"data.n_train + n_val + n_test = {need} exceeds the {len(rows)} rows of {path.name}; lower them")
    texts = [str(r[spec.text_field]) for r in rows]
    names = [str(r[spec.label_field]) for r in rows]
    labels = sorted(set(names))
    if len(labels) < 2:
        raise InputError(f"{path.name} has a single label ({labels}); classification needs at least two")
    y = np.array([labels.index(n) for n in names], dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(rows))[:need]
    a, b = spec.n_train, spec.n_train + spec.n_val
    pick = lambda idx: [texts[i] for i in idx]  # noqa: E731
    return TextSplits(pick(order[:a]), pick(order[a:b]), pick(order[b:need]), y[order[:a]], y[order[a:b]],
                      y[order[b:need]], labels=labels, origin=f"{path.name} ({len(rows)} rows)")


text_sources.register("csv")(labeled_file)
text_sources.register("jsonl")(labeled_file)


def load_text(spec, *, seed: int, base: Path) -> TextSplits:
    fn = text_sources.get(spec.source)
    return fn(spec, seed=seed, base=base) if fn is labeled_file else fn(spec, seed=seed)


def tokenize(tokenizer, texts: list[str], *, max_length: int) -> dict[str, np.ndarray]:
    """input_ids / attention_mask (N, max_length) int64, padded; batches are trimmed to their longest
    text at use, so padding costs nothing in training."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def neighbour_overlap(a: np.ndarray, b: np.ndarray, *, k: int = 10) -> float:
    """Mean overlap of the k nearest neighbours (cosine, self excluded) of each row under embeddings
    a (N, D) and b (N, D'): |kNN_a(i) & kNN_b(i)| / k, averaged over i."""
    def knn(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)
        sim = e @ e.T  # (N, N)
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k, axis=1)[:, :k]

    na, nb = knn(a.astype(np.float64)), knn(b.astype(np.float64))
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of a and b, both (N, D) -> (N,)."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(1)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of matching rows of a and b, both (N, D)."""
    return float(row_cosines(a, b).mean())
