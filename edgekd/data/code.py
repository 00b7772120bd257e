"""Python functions and what they do: a built-in prompt/response corpus for text generation, derived
offline from the standard library's source (parsed with `ast`, never imported). A prompt is one
function's source without its docstring; its response is the docstring's first sentence. Modules are
split like stdlib-docstrings' documents, so no module's functions are in two splits."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import Splits, sources
from .text import PREPROCESSING, _bucket, stdlib_sources

MAX_LINES = 40  # longer functions make prompts longer than a small model's context is worth
SUMMARY_CHARS = (20, 200)  # shorter is rarely a summary ("Return x."); longer is not one line
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
# where a sentence may end: a period before a capitalised word or the end of the paragraph, unless
# the period ends an abbreviation ("the OS name, e.g. Linux")
_END = re.compile(r"\.(?=\s+[A-Z`'\"(]|\s*$)")
_ABBREVIATIONS = ("e.g", "i.e", "eg", "ie", "cf", "vs")


def first_sentence(doc: str) -> str | None:
    """The first sentence of a docstring's first paragraph on one line, or None when it is not a usable
    summary (too short or long, no final period, a signature line such as "f(x) -> int")."""
    para = " ".join(re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0].split())
    ends = (m.end() for m in _END.finditer(para) if not para[:m.start()].lower().endswith(_ABBREVIATIONS))
    text = para[:next(ends, 0)]
    lo, hi = SUMMARY_CHARS
    # ("f(x) -> int" and pdb's "w(here) Print ..." are usage lines, not summaries; ".." is cut short)
    if (not lo <= len(text) <= hi or "->" in text or ">>>" in text or text.endswith("..")
            or re.match(r"\w+\(", text)):
        return None
    return text


def _trivial(body: list[ast.stmt]) -> bool:
    """Nothing to summarise: empty, `pass`, `...` or `raise NotImplementedError` (abstract methods)."""
    def empty(node: ast.stmt) -> bool:
        if isinstance(node, ast.Pass):
            return True
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # `...` or a stray string
            return True
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
        return False

    return all(map(empty, body))


def _candidates(tree: ast.Module):
    """Public top-level functions and the public methods of public top-level classes."""
    for node in tree.body:
        if isinstance(node, _FUNCS):
            yield node
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from (n for n in node.body if isinstance(n, _FUNCS))


def function_examples(src: str) -> list[tuple[str, str]]:
    """(source without its docstring, the docstring's first sentence) for each function of one module's
    source that has a usable summary (`first_sentence`), at most MAX_LINES lines, public, and more than
    a stub."""
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return []
    lines = src.splitlines()
    out = []
    for node in _candidates(tree):
        doc = ast.get_docstring(node)
        if not doc or node.name.startswith("_") or _trivial(node.body[1:]):
            continue
        summary = first_sentence(doc)
        first = node.body[0]
        if summary is None or first.lineno == node.lineno:  # (a docstring on the def line cannot be cut out)
            continue
        start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        head = lines[start - 1:first.lineno - 1]
        tail = lines[first.end_lineno:node.end_lineno]
        while tail and not tail[0].strip():  # the blank line that followed the docstring
            tail.pop(0)
        code = textwrap.dedent("\n".join(head + tail)).strip("\n")
        if len(code.splitlines()) <= MAX_LINES:
            out.append((code, summary))
    return out


@lru_cache(maxsize=2)
def _stdlib_functions(root: str | None) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """(module, its examples) for the standard library at `root` (None: this interpreter's), parsed once
    per process (parsing the whole library takes seconds); a function whose source two modules share
    is kept in the first only, so it cannot be in two splits."""
    seen: set[str] = set()
    out = []
    for name, src in stdlib_sources(root):
        pairs = [(code, s) for code, s in function_examples(src) if code not in seen and not seen.add(code)]
        if pairs:
            out.append((name, tuple(pairs)))
    return tuple(out)


def stdlib_functions(root: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """{module name: [(prompt, response), ...]} for the standard library at `root` (this interpreter's),
    modules in path order and functions in source order."""
    return {name: list(pairs) for name, pairs in _stdlib_functions(str(root) if root else None)}


@sources.register("python-functions")
def python_functions(spec, *, seed: int, base: Path) -> Splits:
    """Prompt/response pairs: the source of a standard-library function without its docstring, and the
    docstring's first sentence. Modules go 10% to test, 10% to validation, 80% to training (by a hash
    of the module name, as stdlib-docstrings); each split is then sampled down to data.n_* with `seed`
    (0: all of it), keeping source order."""
    from .augment import resolve_policy

    modules = stdlib_functions()
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for name, pairs in modules.items():
        b = _bucket(name)
        parts["test" if b < 10 else "val" if b < 20 else "train"].extend(pairs)
    rng = np.random.default_rng(seed)
    x, responses = {}, {}
    for split, n in (("train", spec.n_train), ("val", spec.n_val), ("test", spec.n_test)):
        pairs = parts[split]
        if len(pairs) < n:
            raise InputError(f"data.n_{split} = {n} but the standard library gives only {len(pairs)} {split} "
                             f"functions; lower data.n_{split}")
        if n:
            pairs = [pairs[i] for i in sorted(rng.choice(len(pairs), n, replace=False))]
        x[split], responses[split] = [p for p, _ in pairs], [r for _, r in pairs]
    total = sum(len(p) for p in modules.values())
    origin = (f"functions of the Python {sys.version.split()[0]} standard library and their docstrings' first "
              f"sentences ({total} functions of {len(modules)} modules, split by module)")
    return Splits(x["train"], None, x["val"], None, x["test"], None, labels=[], kind="text",
                  preprocessing=dict(PREPROCESSING), origin=origin,
                  augment=resolve_policy(spec.augment, kind="text", input_shape=()), responses=responses)
