"""Intermediate features of image models, read through forward hooks (no model is rewritten, so any
architecture works: registered ones, torchvision, timm, transformers) for feature and relation
distillation.

- `capture(model, points)`: a context manager that records, on every forward pass, the output (or the
  input) of named submodules, and removes its hooks on exit.
- `feature_points(model, input_shape)`: a default choice that needs no knowledge of the model: one
  probe pass, then for each spatial size the feature maps leave through a reduction (strided
  convolution, pooling), the map entering the outermost module that reduces it: a stage's output.
- `classifier_input(model, input_shape)`: the last nn.Linear to run; its input is the penultimate
  embedding.
- `Hints`: teacher and student points matched by relative depth, a learned 1x1 convolution where the
  channel counts differ and adaptive average pooling where the spatial sizes do.

Only torch-needing code imports this module: torch is imported at the top."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import RecipeError


@contextlib.contextmanager
def capture(model: nn.Module, points: dict[str, tuple[str, str]]):
    """{key: (submodule name, "output" | "input")} -> a dict that every forward pass of `model` fills
    with {key: tensor} (the input: the submodule's first positional argument). The hooks are removed
    when the block ends, also on an exception."""
    got: dict = {}
    mods = dict(model.named_modules())
    handles = []

    def hook(key: str, what: str):
        def fn(module, args, out) -> None:  # returns None: the output passes on unchanged
            got[key] = args[0] if what == "input" else out

        return fn

    try:
        for key, (name, what) in points.items():
            if name not in mods:
                raise RecipeError(f"{type(model).__name__} has no submodule '{name}' to read features from")
            handles.append(mods[name].register_forward_hook(hook(key, what)))
        yield got
    finally:
        for h in handles:
            h.remove()


def _probe(model: nn.Module, input_shape) -> list[dict]:
    """Every submodule call of one eval-mode forward pass on two zero images, in the order the calls
    finished: {name, module, start (call order), inp, out (shapes; () when not a tensor), raw (its
    input is the model's own input)}. The model's train/eval flags are restored."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros((2, *input_shape), device=device)
    calls, started = [], {}

    def pre(name):
        def record(module, args) -> None:
            started[name] = len(started)

        return record

    def post(name):
        def record(module, args, out) -> None:
            a = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls.append({"name": name, "module": module, "start": started.get(name, -1),
                          "inp": tuple(a.shape) if a is not None else (), "raw": a is x,
                          "out": tuple(out.shape) if isinstance(out, torch.Tensor) else ()})

        return record

    flags = {m: m.training for m in model.modules()}
    handles = []
    for n, m in model.named_modules():
        if n:
            handles += [m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n))]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, t in flags.items():
            m.training = t
    return calls


def feature_points(model: nn.Module, input_shape) -> list[str]:
    """Names of the submodules whose INPUT is one of the model's stage outputs, shallow to deep: for
    each spatial size that 4-D feature maps leave through a reduction (a call shrinking both H and W:
    a strided convolution, pooling, the global pooling before the classifier), the first-started call
    making it, i.e. the outermost: a stage or block rather than the strided layer inside it, whose
    input is the previous stage's finished output. Sizes no map has between stages (a padded copy
    feeding a strided convolution: neither the image's size nor a reduction's output) and the image
    itself are not features; neither are channels-last linears (only the last axis shrinks)."""
    calls = _probe(model, input_shape)
    cuts = [c for c in calls if len(c["inp"]) == 4 and len(c["out"]) == 4
            and c["out"][2] < c["inp"][2] and c["out"][3] < c["inp"][3]]
    sizes = {tuple(input_shape[1:])} | {c["out"][2:] for c in cuts}
    first: dict[tuple, tuple[int, str]] = {}
    for c in cuts:
        size = c["inp"][2:]
        if not c["raw"] and size in sizes and size[0] * size[1] > 1:
            if size not in first or c["start"] < first[size][0]:
                first[size] = (c["start"], c["name"])
    return [name for _, name in sorted(first.values())]


def classifier_input(model: nn.Module, input_shape) -> tuple[str, int]:
    """(name, width) of the last nn.Linear called: its input is the penultimate embedding (B, D)."""
    hits = [(c["name"], c["inp"]) for c in _probe(model, input_shape)
            if isinstance(c["module"], nn.Linear) and len(c["inp"]) == 2]
    if not hits:
        raise RecipeError(f"{type(model).__name__} calls no nn.Linear on (batch, features): relation distillation "
                          "reads the input of the final linear layer; use distill.method = 'response' or 'feature'")
    name, inp = hits[-1]
    return name, inp[1]


def depth_map(n_student: int, n_teacher: int) -> dict[int, int]:
    """Student point i <- teacher point round(i * n_t / n_s), both 1-based: the same relative depth
    (TinyBERT's uniform layer map)."""
    return {i: max(1, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)}


class Hints(nn.Module):
    """Pairs of (student map, teacher map) for edgekd.losses.fitnets_hint: `pairs` maps student point i to
    teacher point j (1-based, in `feature_points` order); each pair gets a 1x1 convolution C_s -> C_t
    (FitNets' regressor) where the channel counts differ, trained beside the student."""

    def __init__(self, student: nn.Module, teacher: nn.Module, input_shape, pairs: dict[int, int] | None = None):
        super().__init__()
        s_pts, t_pts = feature_points(student, input_shape), feature_points(teacher, input_shape)
        if not s_pts or not t_pts:
            which = "student" if not s_pts else "teacher"
            raise RecipeError(f"feature distillation found no feature maps (4-D outputs larger than 1x1) in the "
                              f"{which}; use distill.method = 'response' or 'relation'")
        pairs = pairs or depth_map(len(s_pts), len(t_pts))
        if max(pairs) > len(s_pts) or max(pairs.values()) > len(t_pts):
            raise RecipeError(f"distill.layer_map {pairs} names feature maps beyond the student's {len(s_pts)} or the "
                              f"teacher's {len(t_pts)}")
        self.points = {i: (s_pts[i - 1], t_pts[j - 1]) for i, j in pairs.items()}  # {i: (student, teacher)}
        s_shape, t_shape = _input_shapes(student, input_shape), _input_shapes(teacher, input_shape)
        self.proj = nn.ModuleDict()
        for i, (s, t) in self.points.items():
            cs, ct = s_shape[s][1], t_shape[t][1]
            if cs != ct:
                self.proj[str(i)] = nn.Conv2d(cs, ct, 1)

    def student_points(self) -> dict[str, tuple[str, str]]:
        return {str(i): (s, "input") for i, (s, _) in self.points.items()}

    def teacher_points(self) -> dict[str, tuple[str, str]]:
        return {str(i): (t, "input") for i, (_, t) in self.points.items()}

    def pairs(self, fs: dict, ft: dict) -> list[tuple]:
        """Captured maps {key: (B, C, H, W)} of both models -> [(r(F_s), F_t)], both (B, C_t, h, w) with
        (h, w) the smaller of the two spatial sizes."""
        out = []
        for key in (str(i) for i in self.points):
            s, t = fs[key], ft[key]
            size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
            if s.shape[2:] != size:
                s = F.adaptive_avg_pool2d(s, size)
            if t.shape[2:] != size:
                t = F.adaptive_avg_pool2d(t, size)
            if key in self.proj:
                s = self.proj[key](s)
            out.append((s, t))
        return out

    def describe(self) -> dict:
        """For the report: which student map learns which teacher map."""
        return {s: t for s, t in self.points.values()}


def _input_shapes(model: nn.Module, input_shape) -> dict[str, tuple]:
    return {c["name"]: c["inp"] for c in _probe(model, input_shape)}
