"""Causal language models (Llama, Qwen2, SmolLM2, ... anything AutoModelForCausalLM loads) for text
generation: teachers from a model folder, hub id or GGUF file ("hf:"), random-weight configs
("hf-config:"), and the students made from a teacher, "layer-subset" (some of its decoder layers) and
"narrow" (a fresh, smaller model of its family). The model is the transformers model itself, in float32
and eval mode: (input_ids, attention_mask) -> logits (B, S, V), with `generate` and a KV cache.

Only torch-needing code imports this module: torch is imported at the top."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import InputError, RecipeError
from ..registry import closest
from . import Built, ModelIO, count_params
from .hf import resolve_ref
from .hf_text import _apply_overrides, _init_embeddings, _load_error, default_keep, find_layers

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # class names of causal LMs, also for remote code


def resolve(spec, *, base: Path) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) of an `hf:` reference: transformers loads a GGUF file
    from its folder and its name."""
    ref = resolve_ref(spec.ref, base, gguf=True)
    if spec.ref.lower().endswith(".gguf"):
        path = Path(ref)
        return str(path.parent), path.name
    return ref, None


def _describe(model, ref: str) -> str:
    c = model.config
    return (f"{type(model).__name__} from {ref} ({c.num_hidden_layers} layers x {c.hidden_size}, "
            f"{count_params(model) / 1e6:.1f}M parameters)")


def _not_causal(ref: str, what: str) -> InputError:
    return InputError(f"model '{ref}' is {what}, not a causal language model; text generation needs a decoder "
                      "trained as one (Llama, Qwen2, SmolLM2: a model AutoModelForCausalLM loads with its head)")


def _prepare(model):
    # float32 whatever the checkpoint stores (bf16, a dequantized GGUF): training, the teacher's targets
    # and export all start from FP32 weights
    return model.float().eval()


def from_pretrained(spec, io: ModelIO, *, base: Path) -> Built:
    """hf:FOLDER|HUB_ID|FILE.gguf|package:NAME/SUBDIR|package:NAME/FILE.gguf as a causal LM; ready (a
    causal LM needs no new head)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder, gguf = resolve(spec, base=base)
    trc = spec.trust_remote_code
    kw = {"trust_remote_code": trc, "dtype": torch.float32}
    what = "this GGUF model"
    if gguf:
        # GGUF holds no architectures list (and reading its config alone takes seconds): the loader decides
        kw["gguf_file"] = gguf
    else:
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trc)
        except (OSError, ValueError, KeyError) as e:
            raise _load_error(spec.ref, e) from None
        # AutoModelForCausalLM would also put a new head on an encoder (BERT as BertLMHeadModel): a
        # checkpoint trained as something else is refused by what it says it is
        archs = config.architectures or []
        causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        if archs and not any(a in causal or a.endswith(_CAUSAL_SUFFIXES) for a in archs):
            raise _not_causal(f"hf:{spec.ref}", f"a {', '.join(archs)}")
        kw["config"], what = config, f"a {config.model_type} model"
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kw)
    except ImportError as e:  # GGUF needs the gguf and accelerate packages: the message names them
        raise InputError(f"model 'hf:{spec.ref}' cannot be loaded: {str(e).splitlines()[0][:200]}") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        if "Unrecognized configuration class" in str(e):
            raise _not_causal(f"hf:{spec.ref}", what) from None
        raise _load_error(spec.ref, e) from None
    model = _prepare(model)
    return Built(model, ready=True, note=f"hf: {_describe(model, spec.ref)}")


def _config_file(spec, base: Path) -> Path | None:
    """The config.json an hf-config reference names (a file or its folder), or None for a model type."""
    p = Path(spec.ref).expanduser()
    p = p if p.is_absolute() else Path(base) / p
    if spec.ref.endswith(".json") or p.is_dir():
        return p / "config.json" if p.is_dir() else p
    return None


def _has_tokenizer(folder: Path) -> bool:
    return any((Path(folder) / n).is_file() for n in _TOKENIZER_FILES)


def from_config(spec, io: ModelIO, *, base: Path) -> Built:
    """hf-config:path/to/config.json (a file or its folder, which must hold a tokenizer too) with
    spec.config_overrides(), randomly initialised (seed torch before calling); not ready."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    ref, what = spec.ref, f"model 'hf-config:{spec.ref}'"
    file = _config_file(spec, base)
    if file is None:
        if ref not in CONFIG_MAPPING:
            raise RecipeError(f"{what}: unknown model type '{ref}'{closest(ref, CONFIG_MAPPING.keys())}; give the "
                              "config.json of a folder that also holds a tokenizer")
        # a model type alone says nothing of the vocabulary: the model could not read or write text
        raise RecipeError(f"{what} has no tokenizer; a text-generation model needs one: give hf-config:FOLDER "
                          "(a config.json beside tokenizer files), or build the student from the teacher "
                          "(student.model = 'narrow')")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{what}: cannot read {file}: {str(e).splitlines()[0][:200]}") from None
    mt = data.pop("model_type", None) if isinstance(data, dict) else None
    if mt not in CONFIG_MAPPING:
        raise InputError(f"{what}: {file} has no known model_type (got {mt!r})")
    if not _has_tokenizer(file.parent):
        raise RecipeError(f"{what}: {file.parent} holds no tokenizer ({', '.join(_TOKENIZER_FILES)}); a "
                          "text-generation model needs one: put the tokenizer files beside the config.json")
    cfg = AutoConfig.for_model(mt, **data)
    if spec.config:
        _apply_overrides(cfg, spec.config_overrides(), what)
    try:
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=spec.trust_remote_code)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise _not_causal(f"hf-config:{ref}", f"a {mt} model") from None
        raise RecipeError(f"{what}: cannot build the model: {str(e).splitlines()[0][:200]}") from None
    except (TypeError, AssertionError) as e:
        raise RecipeError(f"{what}: cannot build the model: {str(e).splitlines()[0][:200]}") from None
    tok = load_tokenizer(spec, base=base)
    if len(tok) > cfg.vocab_size:  # token ids past the embedding table would index out of range
        raise RecipeError(f"{what}: vocab_size {cfg.vocab_size} is smaller than its tokenizer's {len(tok)} tokens; "
                          f"set vocab_size >= {len(tok)}")
    model = _prepare(model)
    return Built(model, ready=False, note=f"hf-config: {_describe(model, ref)}, random weights")


# ---------------------------------------------------------------------- tokenizers

def load_tokenizer(spec, *, base: Path):
    """The tokenizer of an hf: or hf-config: model (a GGUF file's own vocabulary for FILE.gguf), with the
    pad token set to the end-of-sequence token when it has none. Each call returns its own copy (callers
    set padding_side and the like); the loaded one is kept per reference."""
    if spec.scheme == "hf":
        folder, gguf = resolve(spec, base=base)
    elif spec.scheme == "hf-config" and _config_file(spec, base) is not None:
        folder, gguf = str(_config_file(spec, base).parent), None
    else:
        raise RecipeError(f"model '{spec.model}' has no tokenizer of its own: a student built from the teacher "
                          "uses the teacher's (load the teacher's tokenizer)")
    return copy.deepcopy(_tokenizer(folder, gguf, spec.trust_remote_code))


@lru_cache(maxsize=8)
def _tokenizer(folder: str, gguf: str | None, trust_remote_code: bool):
    """Loaded once per reference: a GGUF tokenizer is rebuilt from the file's vocabulary (seconds)."""
    from transformers import AutoTokenizer

    kw = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError, KeyError) as e:
        where = f"{folder}/{gguf}" if gguf else folder
        raise InputError(f"cannot load the tokenizer of '{where}': {str(e).splitlines()[0][:200]}") from None
    if gguf:
        _gguf_special_tokens(tok, Path(folder) / gguf)
    if tok.pad_token is None:  # batches are padded; the padded positions are masked, so any id will do
        tok.pad_token = tok.eos_token
    # a causal LM takes no token type ids, and generate() refuses inputs the model does not use
    tok.model_input_names = [n for n in tok.model_input_names if n != "token_type_ids"]
    return tok


def _gguf_special_tokens(tok, path: Path) -> None:
    """The special tokens and the add-bos/add-eos choice as the GGUF file states them. transformers'
    GGUF Llama converter (transformers/integrations/ggml.py, 4.57) takes the end-of-sequence token from
    the beginning-of-sequence id and adds a beginning token the file may say not to add: SmolLM2 would
    end its answers at <|im_start|> and start every text with it."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields

    def value(key: str):
        f = fields.get(f"tokenizer.ggml.{key}")
        return f.contents() if f is not None else None

    for role in ("bos", "eos", "unk"):
        i = value(f"{role}_token_id")
        if i is not None and 0 <= int(i) < len(tok):
            setattr(tok, f"{role}_token", tok.convert_ids_to_tokens(int(i)))
    pad = value("padding_token_id")
    if pad is not None and 0 <= int(pad) < len(tok):
        tok.pad_token = tok.convert_ids_to_tokens(int(pad))
    for flag in ("add_bos_token", "add_eos_token"):
        if value(flag) is not None and hasattr(tok, flag):  # (the setter rebuilds the post-processor)
            setattr(tok, flag, bool(value(flag)))


# ---------------------------------------------------------------------- students

def _teacher_of(teacher, source: str):
    from transformers import PreTrainedModel

    t = getattr(teacher, "module", teacher)  # a Built or its module
    if not isinstance(t, PreTrainedModel) or t.get_output_embeddings() is None:
        raise RecipeError(f"student.model = '{source}' for text generation is built from a causal LM teacher; set "
                          "teacher.model = 'hf:FOLDER|HUB_ID|FILE.gguf'")
    return t


def _per_layer(cfg, pick: list[int], n: int) -> None:
    """Settings with one value per layer (layer_types, no_rope_layers, ...) take the values of the
    teacher layers in `pick`; the model checks layer_types' length against num_hidden_layers."""
    for key, value in cfg.to_dict().items():
        if "layer" in key and isinstance(value, list) and len(value) == n:
            setattr(cfg, key, [value[k] for k in pick])
    if isinstance(getattr(cfg, "max_window_layers", None), int):
        # Qwen2: layers from this index on use the sliding window; count the picked layers below it
        cfg.max_window_layers = sum(k < cfg.max_window_layers for k in pick)
    cfg.num_hidden_layers = len(pick)


def _build(cls, cfg, source: str):
    try:
        return cls(cfg).eval()
    except (ValueError, TypeError, AssertionError, RuntimeError) as e:
        raise RecipeError(f"student '{source}': cannot build a {cls.__name__} from this config: "
                          f"{str(e).splitlines()[0][:200]}") from None


def layer_subset(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """The teacher with `spec.keep_layers` of its decoder layers (0-based; default evenly spread, first
    and last included: hf_text.default_keep), its embedding, final norm and LM head (tied stays tied);
    spec.config overrides on top (Sanh et al. 2019, DistilBERT, sec. 3; Muralidharan et al. 2024,
    Minitron: depth pruning of a causal LM, then logit distillation). The student is built fresh from
    its own config, so each layer's attention index (which the KV cache is kept by) is its new
    position, and the weights are the teacher's."""
    t = _teacher_of(teacher, "layer-subset")
    name, layers = find_layers(t)
    n = len(layers)
    keep = [int(v) for v in spec.keep_layers.split(",")] if spec.keep_layers else default_keep(n, spec.layers)
    if any(k >= n for k in keep):
        raise RecipeError(f"student.keep_layers {keep} names layers the teacher lacks (it has 0..{n - 1})")
    cfg = copy.deepcopy(t.config)
    _per_layer(cfg, keep, n)
    if spec.config:
        _apply_overrides(cfg, spec.config_overrides(), "student.config")
    s = _build(type(t), cfg, "layer-subset")
    prefix = name + "."

    def teacher_key(key: str) -> str:  # student layer j's entries are the teacher's layer keep[j]
        if not key.startswith(prefix):
            return key
        j, _, rest = key[len(prefix):].partition(".")
        return f"{prefix}{keep[int(j)]}.{rest}"

    src = t.state_dict()
    try:
        s.load_state_dict({k: src[teacher_key(k)] for k in s.state_dict()})
    except (KeyError, RuntimeError) as e:
        raise RecipeError(f"student.config changes the shape of the teacher's weights "
                          f"({str(e).splitlines()[0][:120]}); a layer subset copies them as they are: use "
                          "student.model = 'narrow' for another width") from None
    s.generation_config = copy.deepcopy(t.generation_config)
    return Built(s.eval(), ready=False, note=f"layer-subset: teacher layers {keep} of 0..{n - 1}, width "
                 f"{cfg.hidden_size}, {count_params(s) / 1e6:.1f}M parameters")


def kv_heads(heads: int, teacher_heads: int, teacher_kv: int) -> int:
    """Key/value heads of a student with `heads` attention heads: the largest divisor of heads (grouped
    attention needs equal groups) whose share of heads is at most the teacher's kv/attention ratio, so
    the student shares keys as much as the teacher does or more (SmolLM2 9/3 heads: 6 heads -> 2, 4 -> 1)."""
    return max(d for d in range(1, heads + 1) if heads % d == 0 and (d == 1 or d * teacher_heads <= heads * teacher_kv))


def narrow(spec, io: ModelIO, *, base: Path, teacher=None) -> Built:
    """A fresh causal LM of the teacher's family: spec.layers x spec.hidden, spec.heads heads (key/value
    heads by `kv_heads`), MLP spec.intermediate, the teacher's vocabulary, special ids and positions,
    tied embeddings, spec.config overrides on top. The embedding starts as the teacher's projected on
    its top `hidden` principal directions: with a vocabulary of tens of thousands of tokens each row
    is trained only when its token occurs, so a random table learns slowly, while the projection keeps
    the teacher's geometry of the vocabulary; everything else is random (seed torch before calling)."""
    from .hf_text import _INTERMEDIATE

    t = _teacher_of(teacher, "narrow")
    cfg = copy.deepcopy(t.config)
    n, h_t = cfg.num_hidden_layers, cfg.num_attention_heads
    kv = kv_heads(spec.heads, h_t, getattr(cfg, "num_key_value_heads", None) or h_t)
    cfg.hidden_size, cfg.num_attention_heads = spec.hidden, spec.heads
    if hasattr(cfg, "num_key_value_heads"):
        cfg.num_key_value_heads = kv
    if getattr(cfg, "head_dim", None) is not None:  # Llama keeps it apart from the width
        cfg.head_dim = spec.hidden // spec.heads
    known = cfg.to_dict()
    for key in _INTERMEDIATE:
        if key in known:
            setattr(cfg, key, spec.intermediate)
            break
    cfg.tie_word_embeddings = True
    _per_layer(cfg, [i * n // spec.layers for i in range(spec.layers)], n)
    if spec.config:
        _apply_overrides(cfg, spec.config_overrides(), "student.config")
    s = _build(type(t), cfg, "narrow")
    _init_embeddings(s, t, layers=find_layers(t)[0])
    s.generation_config = copy.deepcopy(t.generation_config)
    return Built(s.eval(), ready=False, note=f"narrow: {type(s).__name__} {cfg.num_hidden_layers} layers x "
                 f"{cfg.hidden_size} ({cfg.num_attention_heads} heads, {kv} key/value), embedding from the teacher's "
                 f"by PCA, {count_params(s) / 1e6:.1f}M parameters")
