"""Run an exported causal language model with numpy and onnxruntime alone.

    lm = CausalLM("build/student-onnx")                 # a folder holding model.onnx
    new = lm.generate(lm.encode("def add(a, b):"), max_new_tokens=32)
    print(lm.decode(new))

The folder is an optimum `text-generation-with-past` export (float32, float16 or weight-only INT4
MatMulNBits: all take the same inputs): input_ids, attention_mask, position_ids (most architectures)
and one past key and value per layer, (batch, kv_heads, past_len, head_dim); it returns logits
(batch, seq, vocab) and the present keys and values. An empty past is a zero-length past tensor,
optimum's convention, so one graph serves the prompt and every later token.

Never imports torch or transformers (a test checks): an app that runs a distilled model needs numpy,
onnxruntime and, for `encode`/`decode`, tokenizers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["Cache", "CausalLM", "log_softmax"]

_PAST, _PRESENT = "past_key_values.", "present."
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32}


@dataclass(frozen=True)
class Cache:
    """The keys and values of every layer for the `length` tokens seen so far:
    {past input name: (1, kv_heads, length, head_dim)}. A step returns a new cache; an old one stays valid."""
    tensors: dict
    length: int


def log_softmax(logits: np.ndarray, *, rows: int = 64) -> np.ndarray:
    """log p over the last axis, float32; computed `rows` rows at a time so a 150k-token vocabulary
    does not need several full-size temporaries at once. (T, V) -> (T, V)"""
    x = np.asarray(logits, dtype=np.float32).reshape(-1, logits.shape[-1])
    out = np.empty_like(x)
    for i in range(0, len(x), rows):
        z = x[i:i + rows] - x[i:i + rows].max(axis=-1, keepdims=True)  # (r, V)
        out[i:i + rows] = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out.reshape(logits.shape)


class CausalLM:
    """A loaded causal LM: `prefill` and `step` for the prompt and each later token, `generate` and
    `stream` on top of them, `logits` and `nll` for scoring."""

    def __init__(self, folder, *, threads: int = 1, providers=None):
        import onnxruntime as ort

        from .backends import first_line
        from .backends.onnxruntime_onnx import OPTIONS

        self.folder = Path(folder)
        path = self.folder / "model.onnx"
        if not path.is_file():
            raise InputError(f"'{self.folder}' has no model.onnx; give the folder of an optimum "
                             "text-generation-with-past export")
        if threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        self.config = _read_json(self.folder / "config.json")
        so = ort.SessionOptions()  # the same session settings as every ONNX model edgekd benchmarks
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = OPTIONS["inter_op_num_threads"]
        so.execution_mode = getattr(ort.ExecutionMode, OPTIONS["execution_mode"])
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIONS["graph_optimization_level"])
        try:
            self.session = ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors for bad files
            raise InputError(f"onnxruntime cannot load '{path}': {first_line(e)}; re-export it") from None
        self.threads = threads
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self._past = [n for n in inputs if n.startswith(_PAST)]
        known = {"input_ids", "attention_mask", "position_ids", *self._past}
        if "input_ids" not in inputs or "logits" not in outputs or not self._past or set(inputs) - known:
            raise InputError(f"'{path}' is not a causal LM with a key/value cache (inputs: {', '.join(inputs)}); "
                             "export it with optimum's task text-generation-with-past")
        self._present = [_PRESENT + n[len(_PAST):] for n in self._past]
        if missing := [n for n in self._present if n not in outputs]:
            raise InputError(f"'{path}' takes past keys and values but does not return {missing[0]}; "
                             "export it with optimum's task text-generation-with-past")
        self._names = inputs
        first = inputs[self._past[0]]
        if first.type not in ("tensor(float)", "tensor(float16)"):
            raise InputError(f"'{path}' keeps its cache as {first.type}; edgekd runs float32 or float16 caches")
        self.cache_dtype = np.dtype(_DTYPES[first.type])
        self.num_layers = sum(n.endswith(".key") for n in self._past)
        heads, head_dim = first.shape[1], first.shape[3]
        cfg = self.config
        if not isinstance(heads, int):  # symbolic in the graph: the config says
            heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        if not isinstance(head_dim, int):
            head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        self.kv_heads, self.head_dim = int(heads), int(head_dim)
        vocab = next(o.shape[-1] for o in self.session.get_outputs() if o.name == "logits")
        self.vocab_size = int(vocab) if isinstance(vocab, int) else int(cfg["vocab_size"])
        self.context: int | None = next((int(cfg[k]) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                                         if isinstance(cfg.get(k), int)), None)
        gen = _read_json(self.folder / "generation_config.json")
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        self.eos_ids: tuple[int, ...] = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self._outputs = ["logits", *self._present]
        self._tokenizer = None

    # -- the two calls everything else is made of ------------------------------------------------

    def empty_cache(self) -> Cache:
        """No tokens seen: zero-length past tensors, (1, kv_heads, 0, head_dim) each."""
        empty = np.zeros((1, self.kv_heads, 0, self.head_dim), self.cache_dtype)
        return Cache({n: empty for n in self._past}, 0)

    def _run(self, ids: np.ndarray, cache: Cache) -> tuple[np.ndarray, Cache]:
        """ids (T,) after `cache` -> logits (T, V) float32 and the cache with them."""
        t, past = len(ids), cache.length
        feed = {"input_ids": ids.astype(_dtype(self._names["input_ids"]))[None], **cache.tensors}  # (1, T)
        if "attention_mask" in self._names:  # one unpadded sequence: every position is attended
            feed["attention_mask"] = np.ones((1, past + t), _dtype(self._names["attention_mask"]))
        if "position_ids" in self._names:
            feed["position_ids"] = np.arange(past, past + t, dtype=_dtype(self._names["position_ids"]))[None]
        logits, *present = self.session.run(self._outputs, feed)
        return np.asarray(logits[0], dtype=np.float32), Cache(dict(zip(self._past, present)), past + t)

    def prefill(self, ids) -> tuple[np.ndarray, Cache]:
        """The prompt in one pass: logits at every position, (T, V) float32, and the cache to continue from."""
        return self._run(self._ids(ids), self.empty_cache())

    def step(self, token: int, cache: Cache) -> tuple[np.ndarray, Cache]:
        """One more token after `cache`: the next token's logits (V,) and the longer cache."""
        if self.context is not None and cache.length >= self.context:
            raise InputError(f"the cache already holds {cache.length} tokens, the model's whole context; "
                             "start again from a shorter prompt")
        logits, cache = self._run(np.array([token], np.int64), cache)
        return logits[0], cache

    # -- generation --------------------------------------------------------------------------------

    def stream(self, ids, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               seed: int = 0, stop_ids=None) -> Iterator[int]:
        """New tokens one at a time, as they are chosen (see `generate`); the arguments are checked now,
        the model runs as the iterator is read."""
        ids = self._ids(ids)
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        if self.context is not None and len(ids) + max_new_tokens > self.context:
            raise InputError(f"a prompt of {len(ids)} tokens plus max_new_tokens={max_new_tokens} exceeds the model's "
                             f"context of {self.context}; shorten the prompt or lower max_new_tokens")
        stop = set(self.eos_ids if stop_ids is None else stop_ids)
        return self._tokens(ids, max_new_tokens, stop, np.random.default_rng(seed),
                            {"temperature": temperature, "top_k": top_k, "top_p": top_p})

    def _tokens(self, ids: np.ndarray, max_new_tokens: int, stop: set, rng, sampling: dict) -> Iterator[int]:
        logits, cache = self.prefill(ids)
        nxt = logits[-1]  # (V,)
        for i in range(max_new_tokens):
            token = _pick(nxt, rng, **sampling)
            yield token
            if token in stop or i == max_new_tokens - 1:
                return
            nxt, cache = self.step(token, cache)

    def generate(self, ids, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, stop_ids=None) -> list[int]:
        """The new tokens after the prompt `ids`: greedy when temperature is 0, else sampled (top-k, then
        top-p, from a generator seeded by `seed`, so a seed repeats its text). Stops after a token of
        `stop_ids` (default: the model's eos ids; () never stops early), which is returned last, as
        transformers' generate does."""
        return list(self.stream(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, stop_ids=stop_ids))

    # -- scoring -----------------------------------------------------------------------------------

    def logits(self, ids) -> np.ndarray:
        """Logits at every position of `ids` in one pass from an empty cache: (T, V) float32."""
        return self.prefill(ids)[0]

    def nll(self, ids, *, window: int, stride: int) -> tuple[float, int]:
        """Summed negative log-likelihood (nats) of `ids` and how many tokens it scores: the strided
        sliding-window evaluation of Hugging Face's perplexity guide. Windows of `window` tokens start
        every `stride` tokens; each window scores only the tokens no earlier window scored, so every
        token but the first is scored once, with up to window-1 tokens of context. perplexity =
        exp(nll / tokens)."""
        ids = self._ids(ids)
        if window < 2 or (self.context is not None and window > self.context):
            raise InputError(f"window must be in [2, {self.context}] (the model's context), got {window}")
        if not 1 <= stride < window:
            raise InputError(f"stride must be in [1, window - 1] = [1, {window - 1}] so no token goes unscored, "
                             f"got {stride}")
        total, count, done = 0.0, 0, 1  # done: tokens before it are scored (the first token has no context)
        for begin in range(0, len(ids), stride):
            end = min(begin + window, len(ids))
            if end > done:
                lp = log_softmax(self.logits(ids[begin:end])[done - begin - 1:end - begin - 1])  # (end - done, V)
                total -= float(lp[np.arange(len(lp)), ids[done:end]].astype(np.float64).sum())
                count += end - done
                done = end
            if end == len(ids):
                break
        return total, count

    # -- text --------------------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> np.ndarray:
        """Token ids (T,) int64 of `text`, by the folder's tokenizer.json (special tokens as its
        post-processor adds them, as transformers' fast tokenizer does)."""
        return np.array(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids, np.int64)

    def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    @property
    def tokenizer(self):
        """The folder's tokenizer.json as a `tokenizers.Tokenizer` (loaded on first use)."""
        if self._tokenizer is None:
            try:
                from tokenizers import Tokenizer
            except ModuleNotFoundError:
                raise InputError("text needs the tokenizers package: pip install 'edgekd[runtime]'") from None
            path = self.folder / "tokenizer.json"
            if not path.is_file():
                raise InputError(f"'{self.folder}' has no tokenizer.json; pass token ids, or copy the tokenizer "
                                 "beside model.onnx")
            self._tokenizer = Tokenizer.from_file(str(path))
        return self._tokenizer

    def _ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) == 0 or ids.dtype.kind not in "iu":
            raise InputError(f"token ids must be a non-empty 1-D integer array, got shape {ids.shape} of {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise InputError(f"token id {int(ids.max() if ids.max() >= self.vocab_size else ids.min())} is outside "
                             f"the vocabulary [0, {self.vocab_size}); encode text with this model's tokenizer")
        if self.context is not None and len(ids) > self.context:
            raise InputError(f"{len(ids)} tokens exceed the model's context of {self.context}; shorten the input")
        return ids.astype(np.int64)


def _dtype(arg) -> type:
    return _DTYPES.get(arg.type, np.int64)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"'{path}' is not valid JSON ({e}); re-export the model") from None


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise InputError(f"top_k must be >= 0 (0 = no limit), got {top_k}")
    if not 0 < top_p <= 1:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


def _pick(logits: np.ndarray, rng: np.random.Generator, *, temperature: float, top_k: int, top_p: float) -> int:
    """The next token from logits (V,): the argmax at temperature 0, else a draw from the softmax at
    `temperature` over the top_k most likely tokens, cut to the smallest set holding top_p of the mass."""
    if temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature  # (V,)
    if 0 < top_k < len(z):
        z[z < np.partition(z, -top_k)[-top_k]] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1:
        order = np.argsort(-p)  # (V,) most likely first
        before = np.cumsum(p[order]) - p[order]  # mass of the more likely tokens
        p[order[before >= top_p]] = 0.0  # the most likely token always stays (before = 0)
        p /= p.sum()
    return int(rng.choice(len(p), p=p))
