"""Hugging Face text encoders (BERT, RoBERTa, XLM-R, DistilBERT, DeBERTa-v2, ModernBERT, MiniLM, ...):
one wrapper, `TextEncoder`, that pools, projects and classifies so that every model has the same
signature, (input_ids, attention_mask) -> embedding (B, D) | logits (B, K), and the students made from
a teacher: "layer-subset" (some of its layers) and "narrow" (a fresh, smaller encoder of its family).

Only torch-needing code imports this module: torch is imported at the top."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import InputError, RecipeError
from ..registry import closest
from . import Built, ModelIO, sources
from .hf import resolve_ref


class TextEncoder(nn.Module):
    """A transformers model -> pooled sentence embedding (-> projection) (-> normalization) (-> logits).

    `hf` is either a bare encoder (AutoModel) or a fine-tuned sequence classifier whose own head gives
    the logits (`hf_head`). Hidden states and attention probabilities come from the model itself
    (output_hidden_states / output_attentions, eager attention), so any encoder whose layers form a
    module list works without re-implementing its layers."""

    def __init__(self, hf, *, pooling: str = "mean", normalize: bool = False, out_dim: int | None = None,
                 num_labels: int = 0, hf_head: bool = False, labels: list[str] | None = None, source: str = "",
                 trust_remote_code: bool = False):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise RecipeError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.hf = hf
        self.pooling, self.normalize, self.hf_head = pooling, normalize, hf_head
        width = hf.config.hidden_size
        # a narrow student's embedding is projected to the teacher's width, so the two are comparable
        self.proj = nn.Linear(width, out_dim) if out_dim and out_dim != width else None
        self.head = nn.Linear(out_dim or width, num_labels) if num_labels and not hf_head else None
        self.labels = list(labels or [])  # the data's class names, in class-id order (classifiers)
        self.source = source  # where the tokenizer lives: a model folder or hub id ("" when none)
        self.trust_remote_code = trust_remote_code
        self.kept_layers: list[int] | None = None  # a layer subset: the teacher layers it copied (0-based)

    # ------------------------------------------------------------------ structure

    @property
    def base(self):
        """The encoder without any task head (the classifier's base model, or `hf` itself)."""
        return self.hf.base_model

    @property
    def layers(self) -> nn.ModuleList:
        return find_layers(self.base)[1]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.hf.config.hidden_size

    @property
    def embedding_dim(self) -> int:
        """Width of `features()["embedding"]` (and of forward's output without a head)."""
        return self.proj.out_features if self.proj is not None else self.hidden_size

    @property
    def num_labels(self) -> int:
        if self.hf_head:
            return self.hf.config.num_labels
        return self.head.out_features if self.head is not None else 0

    def input_embeddings(self) -> nn.Embedding:
        """The word embedding table (most of a small encoder's parameters; often kept frozen)."""
        return self.hf.get_input_embeddings()

    # ------------------------------------------------------------------ computation

    def pool(self, h, attention_mask):
        """(B, S, D) token states -> (B, D') sentence embedding: mean over real tokens or the first token,
        then the projection and L2 normalization when the model has them."""
        if self.pooling == "cls":
            e = h[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, S, 1)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
        if self.proj is not None:
            e = self.proj(e)
        if self.normalize:
            e = nn.functional.normalize(e, dim=-1)
        return e

    def features(self, input_ids, attention_mask, *, attention: bool = False) -> dict:
        """hidden: [embeddings, layer 1, ..., layer L], each (B, S, D); embedding (B, D'); logits (B, K)
        when classifying; attention (B, H, S, S), the last layer's probabilities, when asked (else None)."""
        last = {}

        def keep_last(module, args, out) -> None:  # returns None: the output passes on unchanged
            last["h"] = out[0]

        # the classifier's outputs hold no last_hidden_state (and ModernBERT's last hidden state is normed
        # after its layers): read it from the base model's own output
        hook = self.base.register_forward_hook(keep_last) if self.hf_head else None
        try:
            out = self.hf(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                          output_attentions=attention, return_dict=True)
        finally:
            if hook is not None:
                hook.remove()
        h = last["h"] if self.hf_head else out.last_hidden_state
        att = None
        if attention:
            att = out.attentions[-1] if out.attentions else None
            if att is None:
                raise RecipeError(f"{type(self.base).__name__} returns no attention probabilities; "
                                  "remove attention_kl from distill.losses")
        result = {"hidden": list(out.hidden_states), "embedding": self.pool(h, attention_mask), "attention": att}
        if self.hf_head:
            result["logits"] = out.logits
        elif self.head is not None:
            result["logits"] = self.head(result["embedding"])
        return result

    def forward(self, input_ids, attention_mask):
        if self.hf_head:
            return self.hf(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits
        h = self.hf(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        e = self.pool(h, attention_mask)
        return self.head(e) if self.head is not None else e


# ---------------------------------------------------------------------- references and files

def _read_json(ref: str, name: str):
    """A JSON file of a model folder or hub repository, or None when it has none."""
    p = Path(ref) / name
    if not Path(ref).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            p = Path(hf_hub_download(ref, name))
        except Exception:  # noqa: BLE001 - absent file, no network or no cache: the file is optional
            return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def sentence_config(ref: str) -> dict:
    """Pooling, normalization (and what cannot be reproduced) as sentence-transformers stores them
    (modules.json, 1_Pooling/config.json); mean pooling without normalization for a plain encoder."""
    cfg = {"pooling": "mean", "normalize": False, "unsupported": []}
    for m in _read_json(ref, "modules.json") or []:
        kind = m.get("type", "").rsplit(".", 1)[-1]
        if kind == "Normalize":
            cfg["normalize"] = True
        elif kind == "Pooling":
            pool = _read_json(ref, f"{m.get('path', '')}/config.json".lstrip("/")) or {}
            modes = [k.removeprefix("pooling_mode_") for k, v in pool.items() if k.startswith("pooling_mode_") and v]
            if modes == ["cls_token"]:
                cfg["pooling"] = "cls"
            elif modes not in ([], ["mean_tokens"]):
                cfg["unsupported"].append(f"pooling {'+'.join(modes)} (mean used)")
        elif kind != "Transformer":
            cfg["unsupported"].append(f"module {kind}")
    return cfg


def load_tokenizer(ref_or_model, *, trust_remote_code: bool = False):
    """The tokenizer of a resolved reference (folder or hub id) or of a TextEncoder (its teacher's);
    `tokenizer.save_pretrained(folder)` writes it next to an export."""
    if isinstance(ref_or_model, TextEncoder):
        ref, trust_remote_code = ref_or_model.source, ref_or_model.trust_remote_code
        if not ref:
            raise InputError("this model was built from a config alone and has no tokenizer; give the teacher as "
                             "hf:FOLDER (a model folder with tokenizer files)")
    else:
        ref = str(ref_or_model)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the tokenizer of '{ref}': {str(e).splitlines()[0][:200]}") from None


# model types whose position ids start after the padding index (fairseq style), so that
# max_position_embeddings - (pad_token_id + 1) positions are usable
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "mpnet", "ibert",
                     "xmod", "roberta-prelayernorm")


def token_limit(ref: str, tokenizer=None, *, trust_remote_code: bool = False) -> int | None:
    """The most tokens one text may have for this model (folder or hub id): its learned positions, its
    tokenizer's model_max_length and a sentence-transformers max_seq_length, whichever is least;
    None when none of them says."""
    limits = []
    if tokenizer is not None and 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    st = _read_json(ref, "sentence_bert_config.json") or {}
    if st.get("max_seq_length"):
        limits.append(int(st["max_seq_length"]))
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(ref, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        cfg = None
    positions = getattr(cfg, "max_position_embeddings", None)
    if positions:
        if cfg.model_type in _OFFSET_POSITIONS:
            positions -= (getattr(cfg, "pad_token_id", None) or 0) + 1
        limits.append(int(positions))
    return min(limits) if limits else None


def find_layers(model) -> tuple[str, nn.ModuleList]:
    """(name, list) of the encoder's transformer blocks: the module list of same-class blocks with
    config.num_hidden_layers entries, else the longest (the shallowest on ties)."""
    want = getattr(model.config, "num_hidden_layers", None)
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(b) for b in m}) == 1]
    if not found:
        raise InputError(f"{type(model).__name__} has no list of layers (nn.ModuleList); edgekd's text models "
                         "need an encoder of stacked blocks such as BERT, RoBERTa, DeBERTa or ModernBERT")
    exact = [f for f in found if len(f[1]) == want]
    return min(exact or found, key=lambda f: (-len(f[1]), f[0].count(".")))


# ---------------------------------------------------------------------- teachers

def _load_error(ref: str, e: Exception) -> InputError:
    msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    hint = (" (it ships its own code: set trust_remote_code = true if you trust it)"
            if "trust_remote_code" in str(e) else "")
    return InputError(f"model 'hf:{ref}' cannot be loaded: {msg}{hint}")


def _prepare(model):
    """Eval mode and the settings every wrapper wants: no torch.compile inside forward (ModernBERT
    compiles its MLPs on GPUs by itself), so copies, hooks and exports see plain modules."""
    if hasattr(model.config, "reference_compile"):
        model.config.reference_compile = False
    return model.eval()


def _drop_pooler(model):
    # BERT-style pooler (dense + tanh on the first token): unused by our pooling, so not exported or counted
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _same_labels(ours: list[str], theirs: list[str]) -> list[int] | None:
    """perm with theirs[perm[j]] == ours[j] (names compared case-insensitively), or None."""
    key = [str(v).strip().casefold() for v in theirs]
    want = [str(v).strip().casefold() for v in ours]
    if len(set(key)) != len(key) or sorted(key) != sorted(want):
        return None
    return [key.index(v) for v in want]


def _final_linear(clf) -> nn.Linear | None:
    """The classifier's last linear layer outside its base model (the one giving the logits)."""
    inside = {id(m) for m in clf.base_model.modules()}
    hits = [m for m in clf.modules() if isinstance(m, nn.Linear) and id(m) not in inside
            and m.out_features == clf.config.num_labels]
    return hits[-1] if hits else None


def _reorder_head(clf, perm: list[int], labels: list[str]) -> bool:
    """Permute the classifier's output rows so logit j means the data's label j; False if no head found."""
    lin = _final_linear(clf)
    if lin is None:
        return False
    idx = torch.tensor(perm)
    with torch.no_grad():
        lin.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            lin.bias.copy_(lin.bias[idx])
    clf.config.id2label = dict(enumerate(labels))
    clf.config.label2id = {v: i for i, v in enumerate(labels)}
    return True


def from_pretrained(spec, io: ModelIO, *, base: Path) -> Built:
    """hf:FOLDER|HUB_ID|package:NAME/SUBDIR as a text model for `io`. A fine-tuned sequence classifier
    whose label names are the data's keeps its own head (ready); any other model gets a new head
    for io.num_classes classes (not ready); an embedding model (io.num_classes == 0) is ready."""
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    ref = resolve_ref(spec.ref, base)
    trc = spec.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(ref, trust_remote_code=trc)
    except (OSError, ValueError, KeyError) as e:
        raise _load_error(spec.ref, e) from None
    sent = sentence_config(ref)
    pooling = f"{sent['pooling']} pooling{', L2-normalized' if sent['normalize'] else ''}"
    extra = f"; not reproduced: {', '.join(sent['unsupported'])}" if sent["unsupported"] else ""
    k = io.num_classes
    kw = {"trust_remote_code": trc, "attn_implementation": "eager"}  # eager: attention probabilities exist
    common = {"pooling": sent["pooling"], "normalize": sent["normalize"], "source": ref, "trust_remote_code": trc}
    archs = config.architectures or []
    named = any(a.endswith("ForSequenceClassification") for a in archs)
    why = ""
    # a classifier by its config, or perhaps one (a config without architectures): its weights tell
    if k and (named or not archs):
        theirs = [config.id2label[i] for i in range(config.num_labels)]
        perm = _same_labels(io.labels, theirs)
        if perm is not None:
            try:
                clf, info = AutoModelForSequenceClassification.from_pretrained(ref, output_loading_info=True, **kw)
            except (OSError, ValueError) as e:
                if named:
                    raise _load_error(spec.ref, e) from None
                clf, info = None, {"missing_keys": ["(no sequence classifier for this model type)"]}
            if not info["missing_keys"] and _reorder_head(clf, perm, list(io.labels)):
                model = TextEncoder(_prepare(clf), hf_head=True, labels=io.labels, **common)
                order = "" if perm == list(range(k)) else ", logits reordered to the data's label order"
                return Built(model, ready=True, note=f"hf: {type(clf).__name__} from {spec.ref} with its own "
                             f"{k}-class head{order} ({model.num_layers} layers x {model.hidden_size}){extra}")
            why = f"; no trained {k}-class head in its weights: a new one"
        elif named:
            why = f"; its head's labels ({', '.join(map(str, theirs))}) are not this data's: a new {k}-class head"
    try:
        enc = AutoModel.from_pretrained(ref, **kw)
    except (OSError, ValueError) as e:
        raise _load_error(spec.ref, e) from None
    model = TextEncoder(_drop_pooler(_prepare(enc)), num_labels=k, labels=io.labels, **common)
    shape = f"{model.num_layers} layers x {model.hidden_size}, {pooling}"
    if k:
        why = why or f"; a new {k}-class head"
        return Built(model, ready=False, note=f"hf: {type(enc).__name__} from {spec.ref} ({shape}){why}{extra}")
    return Built(model, ready=True, note=f"hf: {type(enc).__name__} from {spec.ref} ({shape}){extra}")


def _apply_overrides(cfg, overrides: dict, what: str) -> None:
    known = cfg.to_dict()
    for key, value in overrides.items():
        if key not in known and not hasattr(cfg, key):
            raise RecipeError(f"{what}: config key '{key}' is not a {cfg.model_type} setting{closest(key, known)}")
        setattr(cfg, key, value)


def from_config(spec, io: ModelIO, *, base: Path) -> Built:
    """hf-config:MODEL_TYPE or hf-config:path/to/config.json (a file or its folder), with
    spec.config_overrides(), randomly initialised (seed torch before calling); a new head for
    io.num_classes classes; mean pooling."""
    from transformers import AutoConfig, AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    ref, what = spec.ref, f"model 'hf-config:{spec.ref}'"
    p = Path(ref).expanduser()
    p = p if p.is_absolute() else Path(base) / p
    source = ""
    if ref.endswith(".json") or p.is_dir():
        file = p / "config.json" if p.is_dir() else p
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{what}: cannot read {file}: {str(e).splitlines()[0][:200]}") from None
        mt = data.pop("model_type", None)
        if mt not in CONFIG_MAPPING:
            raise InputError(f"{what}: {file} has no known model_type (got {mt!r})")
        cfg = AutoConfig.for_model(mt, **data)
        has_tok = any((file.parent / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
        source = str(file.parent) if has_tok else ""
    else:
        if ref not in CONFIG_MAPPING:
            raise RecipeError(f"{what}: unknown model type '{ref}'{closest(ref, CONFIG_MAPPING.keys())}; "
                              "give a transformers model_type (bert, roberta, deberta-v2, ...) or a config.json")
        cfg = AutoConfig.for_model(ref)
    if spec.config:
        _apply_overrides(cfg, spec.config_overrides(), what)
    cfg._attn_implementation = "eager"
    try:
        enc = AutoModel.from_config(cfg, trust_remote_code=spec.trust_remote_code, attn_implementation="eager")
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{what}: cannot build the model: {str(e).splitlines()[0][:200]}") from None
    model = TextEncoder(_drop_pooler(_prepare(enc)), num_labels=io.num_classes, labels=io.labels, source=source,
                        trust_remote_code=spec.trust_remote_code)
    return Built(model, ready=False, note=f"hf-config: {type(enc).__name__} ({model.num_layers} layers x "
                 f"{model.hidden_size}), random weights")


# ---------------------------------------------------------------------- students

def default_keep(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spread layers that include the first and the last (0-based), as DistilBERT's 12 -> 6
    kept [0, 2, 4, 7, 9, 11]: 6 -> 3 gives [0, 3, 5], 6 -> 2 gives [0, 5]. Keeping the top layer
    matters: the untrained subset that keeps it starts much closer to the teacher."""
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


def _teacher_of(teacher, source: str) -> TextEncoder:
    t = getattr(teacher, "module", teacher)  # a Built or its module
    if not isinstance(t, TextEncoder):
        raise RecipeError(f"student.model = '{source}' is built from a Hugging Face text teacher; "
                          "set teacher.model = 'hf:FOLDER|HUB_ID'")
    return t


@sources.register("layer-subset")
def layer_subset(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """A copy of the teacher keeping `spec.keep_layers` (0-based; default `default_keep`), embeddings,
    pooling and head copied (Sanh et al. 2019, DistilBERT, sec. 3: "initialize the student from the
    teacher by taking one layer out of two"). A causal LM teacher (io.kind "lm"): hf_lm.layer_subset."""
    if io.kind == "lm":
        from . import hf_lm

        return hf_lm.layer_subset(spec, io, base=base, teacher=teacher)
    t = _teacher_of(teacher, "layer-subset")
    if spec.config:
        raise RecipeError("student.config applies to narrow and hf-config students; a layer subset copies the "
                          "teacher's layers as they are")
    if spec.keep_intermediate:
        raise RecipeError("student.keep_intermediate prunes a causal language model's MLPs; an encoder's layer "
                          "subset keeps its layers whole: set student.keep_intermediate = 0")
    n = t.num_layers
    keep = [int(v) for v in spec.keep_layers.split(",")] if spec.keep_layers else default_keep(n, spec.layers)
    if any(k >= n for k in keep):
        raise RecipeError(f"student.keep_layers {keep} names layers the teacher lacks (it has 0..{n - 1})")
    if t.num_labels != io.num_classes:
        raise RecipeError(f"the teacher has {t.num_labels} classes, the data {io.num_classes}; "
                          "build the student from a teacher for this data")
    name, layers = find_layers(t.base)
    kept = nn.ModuleList([layers[k] for k in keep])
    # copy the teacher with the subset in place of its list, so the dropped layers are never copied
    parent, _, leaf = name.rpartition(".")
    holder = t.base.get_submodule(parent) if parent else t.base
    setattr(holder, leaf, kept)
    try:
        s = copy.deepcopy(t)
    finally:
        setattr(holder, leaf, layers)
    s.hf.config.num_hidden_layers = len(keep)
    s.kept_layers = keep
    return Built(s.eval(), ready=False,
                 note=f"layer-subset: teacher layers {keep} of 0..{n - 1}, width {s.hidden_size}")


_INTERMEDIATE = ("intermediate_size", "hidden_dim", "ffn_dim", "d_ff")  # the names families give the MLP width
_TIED_TO_WIDTH = ("embedding_size", "pooler_hidden_size")  # settings equal to the width unless set apart


@sources.register("narrow")
def narrow(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """A fresh encoder of the teacher's family with spec.layers x spec.hidden (spec.heads heads, MLP
    spec.intermediate) and spec.config_overrides(), randomly initialised (seed torch before calling).
    Embedding tables start as the teacher's projected on their top `hidden` principal directions (a
    cheap start that keeps the vocabulary's geometry); the embedding is projected to the teacher's width.
    A causal LM teacher (io.kind "lm"): hf_lm.narrow."""
    if io.kind == "lm":
        from . import hf_lm

        return hf_lm.narrow(spec, io, base=base, teacher=teacher)
    t = _teacher_of(teacher, "narrow")
    cfg = copy.deepcopy(t.base.config)
    width = cfg.hidden_size
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers = spec.hidden, spec.heads, spec.layers
    known = cfg.to_dict()
    for key in _INTERMEDIATE:
        if key in known:
            setattr(cfg, key, spec.intermediate)
            break
    for key in _TIED_TO_WIDTH:
        if known.get(key) == width:
            setattr(cfg, key, spec.hidden)
    if getattr(cfg, "head_dim", None) is not None and "head_dim" in known:
        cfg.head_dim = spec.hidden // spec.heads
    if spec.config:
        _apply_overrides(cfg, spec.config_overrides(), "student.config")
    try:
        enc = type(t.base)(cfg)
    except (ValueError, TypeError, AssertionError) as e:
        raise RecipeError(f"narrow student: cannot build a {type(t.base).__name__} of width {spec.hidden} with "
                          f"{spec.heads} heads: {str(e).splitlines()[0][:200]}") from None
    _drop_pooler(_prepare(enc))
    _init_embeddings(enc, t.base, layers=find_layers(t.base)[0])
    s = TextEncoder(enc, pooling=t.pooling, normalize=t.normalize, out_dim=t.embedding_dim, num_labels=io.num_classes,
                    labels=io.labels, source=t.source, trust_remote_code=t.trust_remote_code)
    return Built(s.eval(), ready=False, note=f"narrow: {type(enc).__name__} {spec.layers} layers x {spec.hidden} "
                 f"({spec.heads} heads), projected to {t.embedding_dim}")


@torch.no_grad()
def _init_embeddings(student, teacher, *, layers: str) -> None:
    """Every embedding table outside the layers (word, position, token type, relative) as the
    teacher's projected on the top principal directions of its word embeddings."""
    words = teacher.get_input_embeddings().weight  # (V, D_t)
    d_t, d_s = words.shape[1], student.config.hidden_size
    if d_s > d_t:
        return
    _, _, v = torch.linalg.svd(words - words.mean(0), full_matrices=False)  # v: (D_t, D_t)
    basis = v[:d_s].T  # (D_t, D_s)
    mods = dict(student.named_modules())
    for name, src in teacher.named_modules():
        dst = mods.get(name)
        if (isinstance(src, nn.Embedding) and isinstance(dst, nn.Embedding) and not name.startswith(layers + ".")
                and src.embedding_dim == d_t and dst.embedding_dim == d_s and dst.num_embeddings == src.num_embeddings):
            dst.weight.copy_(src.weight @ basis)  # (N, D_s)
