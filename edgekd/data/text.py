"""Text sources: labeled CSV / JSONL rows, unlabeled lines, and a built-in English corpus derived
offline from the Python standard library's docstrings (split by module, so no paragraph of a held-out
module is seen in training). Every text source follows one rule for labels: the label field present in
every row makes the data labeled, absent from every row unlabeled (y_* None, labels []), anything
between is an error."""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import Splits, sources
from .arrays import data_path, encode_labels, split_indices

PREPROCESSING = {"kind": "text", "raw": "UTF-8 text"}  # the task adds its tokenizer step


def text_splits(stored: dict[str, tuple[list[str], list | None]], spec, *, seed: int, where: str, origin: str,
                names: list[str] | None = None, responses: dict[str, list[str]] | None = None) -> Splits:
    """Splits of texts. `stored`: {split: (texts, labels or None)} as the data comes ("train" always);
    missing splits are carved from train with `seed` (edgekd.data.arrays.split_indices). `responses`:
    {split: the response to each text} for prompt/response data, carved with the same indices."""
    from .augment import resolve_policy

    idx = split_indices({s: len(t) for s, (t, _) in stored.items()}, spec, seed=seed, where=where)
    x = {s: [stored[src][0][i] for i in ii] for s, (src, ii) in idx.items()}
    if responses is not None:
        responses = {s: [responses[src][i] for i in ii] for s, (src, ii) in idx.items()}
    if stored["train"][1] is None:
        y, labels = {s: None for s in idx}, []
    else:
        y, labels = encode_labels({s: [stored[src][1][i] for i in ii] for s, (src, ii) in idx.items()},
                                  where=where, names=names)
    return Splits(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], labels=labels, kind="text",
                  preprocessing=dict(PREPROCESSING), origin=origin,
                  augment=resolve_policy(spec.augment, kind="text", input_shape=()), responses=responses)


def _has(row: dict, key: str) -> bool:
    return row.get(key) not in (None, "")  # an empty CSV cell or a JSON null is no value


def labels_of(rows: list[dict], spec, where: str, *, required: bool) -> list | None:
    """The rows' labels under the one rule (every row / no row / some rows), or None when unlabeled."""
    has = [_has(r, spec.label_field) for r in rows]
    if all(has):
        return [r[spec.label_field] for r in rows]
    if not any(has) and not required:
        return None
    if not any(has):
        raise InputError(f"{where} has no '{spec.label_field}' column; set data.label_field to the column of labels "
                         "(for unlabeled text use data.source = 'text-lines' or 'jsonl')")
    i = has.index(False) + 1
    raise InputError(f"{where} row {i} has no '{spec.label_field}' but other rows have one; label every row or none")


def texts_of(rows: list[dict], spec, where: str) -> list[str]:
    for i, r in enumerate(rows, 1):
        if r.get(spec.text_field) is None:
            raise InputError(f"{where} row {i} has no '{spec.text_field}' field (it has {sorted(r)}); set "
                             "data.text_field to the name of the text column")
    return [str(r[spec.text_field]) for r in rows]


def responses_of(rows: list[dict], spec, where: str) -> list[str] | None:
    """Each row's data.response_field (prompt/response data), or None when the field is not set."""
    key = spec.response_field
    if not key:
        return None
    for i, r in enumerate(rows, 1):
        if not _has(r, key):
            raise InputError(f"{where} row {i} has no '{key}' (data.response_field); give every row a response, or "
                             "unset data.response_field")
    return [str(r[key]) for r in rows]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(_read_text(path).splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{i} is not a JSON object ({e.msg}); one object per line") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{i} is not a JSON object; one object per line")
            rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    import csv
    import io

    return list(csv.DictReader(io.StringIO(_read_text(path), newline="")))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"data.path '{path}' is not UTF-8 text; save it as UTF-8") from None


def _file(spec, base: Path, fix: str) -> Path:
    path = data_path(spec, base, fix=fix)
    if not path.is_file():
        raise InputError(f"data.path '{path}' is not a file; {fix}")
    return path


@sources.register("csv")
def csv_file(spec, *, seed: int, base: Path) -> Splits:
    """(text, label) rows of a CSV file with a header, shuffled with `seed` and split n_train / n_val /
    n_test (or by fraction). Labels are sorted, so their indices do not depend on row order."""
    path = _file(spec, base, f"give a CSV file with a header and '{spec.text_field}', '{spec.label_field}' columns")
    rows = _read_csv(path)
    responses = responses_of(rows, spec, str(path))
    # prompt/response rows need no label
    texts, labels = texts_of(rows, spec, str(path)), labels_of(rows, spec, str(path), required=responses is None)
    return text_splits({"train": (texts, labels)}, spec, seed=seed, where=str(path),
                       origin=f"{path.name} ({len(rows)} rows)",
                       responses=None if responses is None else {"train": responses})


@sources.register("jsonl")
def jsonl_file(spec, *, seed: int, base: Path) -> Splits:
    """JSON objects, one a line, with data.text_field and (for labeled data) data.label_field."""
    path = _file(spec, base, f"give a JSONL file of {{\"{spec.text_field}\": ..., \"{spec.label_field}\": ...}} rows")
    rows = _read_jsonl(path)
    texts, labels = texts_of(rows, spec, str(path)), labels_of(rows, spec, str(path), required=False)
    responses = responses_of(rows, spec, str(path))
    return text_splits({"train": (texts, labels)}, spec, seed=seed, where=str(path),
                       origin=f"{path.name} ({len(rows)} rows{'' if labels else ', unlabeled'})",
                       responses=None if responses is None else {"train": responses})


@sources.register("text-lines")
def text_lines(spec, *, seed: int, base: Path) -> Splits:
    """Unlabeled text: one text per non-empty line of a text file, or a JSONL file (.jsonl / .json)
    whose rows hold data.text_field (labeled when every row also holds data.label_field)."""
    path = _file(spec, base, "give a text file with one text per line, or a JSONL file")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = _read_jsonl(path)
        texts, labels = texts_of(rows, spec, str(path)), labels_of(rows, spec, str(path), required=False)
    else:
        texts, labels = [ln.strip() for ln in _read_text(path).splitlines() if ln.strip()], None
    if not texts:
        raise InputError(f"data.path '{path}' holds no text; give one text per line")
    return text_splits({"train": (texts, labels)}, spec, seed=seed, where=str(path),
                       origin=f"{path.name} ({len(texts)} texts{'' if labels else ', unlabeled'})")


# The built-in corpus. Folders of the standard library that are tests, demos or vendored code, not
# documentation.
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

    docs = _documents(str(root or sysconfig.get_paths()["stdlib"]), kind)
    return {name: list(paras) for name, paras in docs}


@lru_cache(maxsize=4)
def _documents(root: str, kind: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """stdlib_documents, parsed once per process (parsing the whole library takes seconds)."""
    extract = _comment_blocks if kind == "comments" else _docstrings
    docs: dict[str, list[str]] = {}
    for name, src in stdlib_sources(root):
        paras = [p for text in extract(src) for p in _paragraphs(text)]
        if paras:
            docs[name] = list(dict.fromkeys(paras))  # dedupe, keep order
    return tuple((name, tuple(paras)) for name, paras in docs.items())


def stdlib_sources(root: str | Path | None = None):
    """(module name, source text) of the standard library at `root` (this interpreter's), in path order,
    without tests, demos and vendored code; read, never imported."""
    import sysconfig

    root = Path(root or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP & set(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            src = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield str(rel.with_suffix("")).replace("/", "."), src


def package_paragraphs(n: int, *, exclude: set[str], per_file: int = 20) -> tuple[list[str], int]:
    """n docstring paragraphs of the installed third-party packages (site-packages), none of them in
    `exclude` (which grows by what is taken), and how many top-level packages they come from.

    Files are visited in a stable order (sha1 of their path below site-packages), at most `per_file`
    paragraphs each, so the text spreads over many packages and only as many files are parsed as
    `n` needs. Parsed with `ast`, never imported."""
    import sysconfig

    roots = sorted({Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")})
    files = []
    for root in roots:
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if {"test", "tests", "testing", "_vendor", "vendor"} & set(rel.parts[:-1]) or rel.name.startswith("test_"):
                continue
            files.append((hashlib.sha1(str(rel).encode()).hexdigest(), rel.parts[0], path))
    files.sort()
    out: list[str] = []
    packages: set[str] = set()
    for _, package, path in files:
        if len(out) >= n:
            break
        try:
            src = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        taken = 0
        for p in (p for text in _docstrings(src) for p in _paragraphs(text)):
            if taken == per_file or len(out) == n:
                break
            if p not in exclude:
                exclude.add(p)
                out.append(p)
                taken += 1
        if taken:
            packages.add(package)
    if len(out) < n:
        raise InputError(f"data.train_packages = {n} but the installed packages give only {len(out)} docstring "
                         f"paragraphs; lower data.train_packages")
    return out, len(packages)


def _bucket(doc: str) -> int:
    """A stable bucket 0..99 per document (sha1, not Python's salted hash)."""
    return int(hashlib.sha1(doc.encode()).hexdigest()[:8], 16) % 100


@sources.register("stdlib-docstrings")
def stdlib_docstrings(spec, *, seed: int, base: Path) -> Splits:
    """Unlabeled English paragraphs from the standard library's docstrings; documents (modules) go
    10% to test, 10% to validation, 80% to training; each split is then sampled down to data.n_* (0:
    all of it). With data.train_comments, the comment blocks of the training modules are added to the
    training split (all of them, beyond n_train): more text for the teacher to label, from modules no
    held-out paragraph comes from; validation and test stay docstrings."""
    import sys

    from .augment import resolve_policy

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
        out[split] = [texts[i] for i in sorted(rng.choice(len(texts), n, replace=False))] if n else list(texts)
    origin = (f"docstring paragraphs of the Python {sys.version.split()[0]} standard library "
              f"({len(docs)} modules, split by module)")
    if spec.train_comments:
        comments = [p for name, paras in stdlib_documents(kind="comments").items() if _bucket(name) >= 20
                    for p in paras if p not in seen and not seen.add(p)]
        out["train"] += comments
        origin += f"; training adds {len(comments)} comment paragraphs of the training modules"
    if spec.train_packages:
        more, packages = package_paragraphs(spec.train_packages, exclude=seen)
        out["train"] += more
        origin += f"; and {len(more)} docstring paragraphs of {packages} installed packages"
    return Splits(out["train"], None, out["val"], None, out["test"], None, labels=[], kind="text",
                  preprocessing=dict(PREPROCESSING), origin=origin,
                  augment=resolve_policy(spec.augment, kind="text", input_shape=()))
