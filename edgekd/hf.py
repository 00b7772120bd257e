"""Hugging Face text encoders: the teacher (any BERT-style model folder or hub id), the students
made from it (layer subsets, narrower encoders), and one wrapper that pools, projects and classifies
so every model exports to the same ONNX signature: (input_ids, attention_mask) -> embedding | logits."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError, RecipeError


def resolve_hf(ref: str, base: Path) -> str:
    """A local folder (relative to the recipe), "package:NAME/SUBDIR" (a model folder shipped inside an
    installed Python package), or a hub id passed through to from_pretrained."""
    if ref.startswith("package:"):
        import importlib.resources
        import importlib.util

        pkg, _, sub = ref.removeprefix("package:").partition("/")
        if importlib.util.find_spec(pkg) is None:
            raise InputError(f"teacher.hf = '{ref}': Python package '{pkg}' is not installed "
                             f"(pip install {pkg.replace('_', '-')})")
        path = Path(str(importlib.resources.files(pkg))) / sub
        if not (path / "config.json").is_file():
            raise InputError(f"teacher.hf = '{ref}': no model folder (config.json) at {sub or '.'} inside '{pkg}'")
        return str(path)
    p = Path(ref).expanduser()
    p = p if p.is_absolute() else base / p
    if p.exists():
        if not (p / "config.json").is_file():
            raise InputError(f"teacher.hf = '{ref}': '{p}' has no config.json; point it at a Hugging Face model folder")
        return str(p)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise InputError(f"teacher.hf = '{ref}': folder '{p}' does not exist")
    return ref  # a hub id: from_pretrained downloads it (needs internet)


def sentence_config(path: str) -> dict:
    """Pooling and normalisation as sentence-transformers stores them (modules.json,
    1_Pooling/config.json); mean pooling without normalisation for a plain encoder."""
    cfg = {"pooling": "mean", "normalize": False}
    d = Path(path)
    try:
        modules = json.loads((d / "modules.json").read_text())
    except (OSError, ValueError):
        return cfg
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("Normalize"):
            cfg["normalize"] = True
        if kind.endswith("Pooling"):
            try:
                pool = json.loads((d / m.get("path", "") / "config.json").read_text())
            except (OSError, ValueError):
                continue
            if pool.get("pooling_mode_cls_token"):
                cfg["pooling"] = "cls"
    return cfg


def load_tokenizer(ref: str, *, trust_remote_code: bool):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise InputError("text tasks need transformers: pip install 'edgekd[text]'") from None
    try:
        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer of teacher.hf '{ref}': {str(e).splitlines()[0][:200]}") from None


def load_hf_encoder(ref: str, *, trust_remote_code: bool):
    """The bare encoder (no task head) with eager attention, so attention probabilities can be read."""
    try:
        from transformers import AutoModel
    except ImportError:
        raise InputError("text tasks need transformers: pip install 'edgekd[text]'") from None
    try:
        model = AutoModel.from_pretrained(ref, trust_remote_code=trust_remote_code, attn_implementation="eager")
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0][:200]
        hint = " (it ships its own code: set teacher.trust_remote_code = true if you trust it)" \
            if "trust_remote_code" in str(e) else ""
        raise InputError(f"cannot load teacher.hf '{ref}': {msg}{hint}") from None
    check_bert_like(model, ref)
    return model.eval()


def check_bert_like(model, ref: str) -> None:
    if not (hasattr(model, "embeddings") and hasattr(getattr(model, "encoder", None), "layer")):
        raise InputError(f"teacher.hf '{ref}' is a {type(model).__name__}; edgekd's text students need a BERT-style "
                         "encoder (model.embeddings + model.encoder.layer), e.g. BERT, MiniLM, RoBERTa")


def _make_encoder_class():
    import torch
    import torch.nn as nn

    class TextEncoder(nn.Module):
        """BERT-style encoder -> pooled sentence embedding (-> projection) (-> class logits).

        The layers are called one by one with an additive mask we build ourselves: that gives every
        hidden state and the last layer's attention for distillation, and it exports to ONNX with
        dynamic batch and sequence axes independently of the transformers version's mask helpers."""

        def __init__(self, bert, *, pooling: str = "mean", normalize: bool = False, out_dim: int | None = None,
                     num_labels: int = 0):
            super().__init__()
            self.bert = bert
            width = bert.config.hidden_size
            self.pooling, self.normalize = pooling, normalize
            # a narrow student's embedding is projected to the teacher's width, so the two are comparable
            self.proj = nn.Linear(width, out_dim) if out_dim and out_dim != width else None
            self.head = nn.Linear(out_dim or width, num_labels) if num_labels else None

        @property
        def num_layers(self) -> int:
            return len(self.bert.encoder.layer)

        def features(self, input_ids, attention_mask, *, attention: bool = False) -> dict:
            """hidden: [embeddings, layer 1, ..., layer L], each (B, S, D); embedding (B, D');
            logits (B, K) with a head; attention (B, H, S, S), last layer, when asked."""
            h = self.bert.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
            ext = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * -1e4  # (B, 1, 1, S) additive mask
            hidden = [h]
            att = None
            for i, layer in enumerate(self.bert.encoder.layer):
                if attention and i == self.num_layers - 1:
                    att = self._attention_probs(layer, h, ext)
                out = layer(h, attention_mask=ext)
                h = out[0] if isinstance(out, tuple) else out
                hidden.append(h)
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, S, 1)
            e = h[:, 0] if self.pooling == "cls" else (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            if self.proj is not None:
                e = self.proj(e)
            if self.normalize:
                e = nn.functional.normalize(e, dim=-1)
            out = {"hidden": hidden, "embedding": e, "attention": att}
            if self.head is not None:
                out["logits"] = self.head(e)
            return out

        @staticmethod
        def _attention_probs(layer, h, ext):
            """softmax(Q K^T / sqrt(d) + mask) of one BERT layer, recomputed from its input h (B, S, D)."""
            sa = layer.attention.self
            heads = sa.num_attention_heads
            b, s, _ = h.shape
            q = sa.query(h).view(b, s, heads, -1).transpose(1, 2)  # (B, H, S, d)
            k = sa.key(h).view(b, s, heads, -1).transpose(1, 2)
            scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + ext  # (B, H, S, S)
            return scores.softmax(-1)

        def forward(self, input_ids, attention_mask):
            f = self.features(input_ids, attention_mask)
            return f["logits"] if self.head is not None else f["embedding"]

    return TextEncoder


def text_encoder(bert, **kw):
    return _make_encoder_class()(bert, **kw)


def default_keep(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spread layers that include the first and the last (0-based), as DistilBERT's 12 -> 6
    kept [0, 2, 4, 7, 9, 11]: 6 -> 3 gives [0, 3, 5], 6 -> 2 gives [0, 5]. Keeping the top layer
    matters: on MiniLM-L6 the untrained [0, 3, 5] subset starts at cosine 0.67 to the teacher,
    [0, 2, 4] at 0.35."""
    if student_layers > teacher_layers:
        raise RecipeError(f"student.layers = {student_layers} exceeds the teacher's {teacher_layers} layers")
    if student_layers == 1:
        return [teacher_layers - 1]
    return [int(i * (teacher_layers - 1) / (student_layers - 1) + 0.5) for i in range(student_layers)]


def default_layer_map(teacher_layers: int, student_layers: int, keep: list[int] | None = None) -> dict[int, int]:
    """Which teacher layer each student layer learns (1-based). A layer subset learns the output of the
    layer it was copied from (keep [0, 3, 5] -> {1: 1, 2: 4, 3: 6}); otherwise the uniform map of
    TinyBERT, student layer i <- teacher layer i * L_t / L_s (6 -> 3: {1: 2, 2: 4, 3: 6})."""
    if keep is not None:
        return {i + 1: k + 1 for i, k in enumerate(keep)}
    return {i: round(i * teacher_layers / student_layers) for i in range(1, student_layers + 1)}


def layer_subset_student(teacher, keep: list[int]):
    """A copy of the teacher encoder keeping layers `keep` (0-based), embeddings and all else copied
    (Sanh et al. 2019, DistilBERT, sec. 3: "initialize the student from the teacher by taking one
    layer out of two")."""
    import copy

    import torch.nn as nn

    n = len(teacher.bert.encoder.layer)
    if any(k >= n for k in keep):
        raise RecipeError(f"student.keep_layers {keep} names layers the teacher lacks (it has 0..{n - 1})")
    s = copy.deepcopy(teacher)
    s.bert.encoder.layer = nn.ModuleList([copy.deepcopy(teacher.bert.encoder.layer[k]) for k in keep])
    s.bert.config.num_hidden_layers = len(keep)
    return s


def narrow_student(teacher, *, layers: int, hidden: int, heads: int, intermediate: int, seed: int):
    """A fresh encoder of the teacher's family with the given sizes. Word and position embeddings
    start as the teacher's projected on their top `hidden` principal directions (a cheap start that
    keeps the vocabulary's geometry); the output is projected back to the teacher's width."""
    import copy

    import torch

    torch.manual_seed(seed)
    cfg = copy.deepcopy(teacher.bert.config)
    cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.num_hidden_layers = hidden, heads, intermediate, layers
    bert = type(teacher.bert)(cfg, add_pooling_layer=False) if "add_pooling_layer" in \
        type(teacher.bert).__init__.__code__.co_varnames else type(teacher.bert)(cfg)
    bert.set_attn_implementation("eager") if hasattr(bert, "set_attn_implementation") else None
    with torch.no_grad():
        words = teacher.bert.embeddings.word_embeddings.weight  # (V, D_t)
        if hidden < words.shape[1]:
            _, _, v = torch.linalg.svd(words - words.mean(0), full_matrices=False)  # v: (D_t, D_t)
            for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
                src = getattr(teacher.bert.embeddings, name).weight  # (N, D_t)
                getattr(bert.embeddings, name).weight.copy_(src @ v[:hidden].T)  # (N, hidden)
    width = teacher.proj.out_features if teacher.proj is not None else teacher.bert.config.hidden_size
    s = text_encoder(bert, pooling=teacher.pooling, normalize=teacher.normalize, out_dim=width,
                     num_labels=teacher.head.out_features if teacher.head is not None else 0)
    return s.eval()
