"""The recipe's [lm] section: what task text-generation needs beyond the shared sections, namely how
prompts are written, the data the teacher generates and the filter it passes, the teacher's cached
logits, and what the benchmark times."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RecipeError


def _check(cond: bool, key: str, want: str, got) -> None:
    if not cond:
        raise RecipeError(f"lm.{key} must be {want}, got {got!r}")


@dataclass(frozen=True)
class LMSpec:
    # Prompts: `instruction` goes before each prompt (a blank line between); the tokenizer's chat
    # template wraps them as the user's message when it has one ("auto") or when asked ("true").
    instruction: str = ""
    chat: str = "auto"  # "auto", "true", "false"
    # Distillation via data generation: the teacher writes `generate` responses per training prompt
    # (0: learn from the data's own responses or text alone), sampled at this temperature / top_p
    # (temperature 0: greedy, then one response per prompt), each at most max_new_tokens tokens.
    generate: int = 1
    temperature: float = 0.7
    top_p: float = 0.9  # nucleus sampling of the generated responses
    max_new_tokens: int = 64  # the longest generated response (and held-out answer), in tokens
    # Which generated responses are kept: at least min_tokens tokens; at most max_repeat of their
    # 3-grams repeated; the teacher's own mean log-probability per token >= min_logprob (its confidence;
    # -inf keeps all); matching `pattern` (a regular expression searched in the response); parsing as
    # JSON when `json`; and the user's `filter`, package.module:function(prompt, response) -> True to
    # keep, or a short reason (str) to drop.
    min_tokens: int = 3
    max_repeat: float = 0.5  # drop a response when more than this share of its 3-grams repeat
    min_logprob: float = -3.0  # drop it when the teacher's mean log-probability per token is lower
    pattern: str = ""  # drop it when this regular expression is not found in it ("" = no check)
    json: bool = False  # drop it when it does not parse as JSON
    filter: str = ""  # package.module:function(prompt, response) -> True to keep, or a reason to drop
    # GKD's lambda: the share of training batches whose responses the student samples itself (on-policy
    # distillation; needs a loss that runs the teacher in the step: reverse_kl or gkd_jsd)
    on_policy: float = 0.0
    # Which tokens of a training sequence the losses score: "response" (instruction tuning's usual mask),
    # or "all" (the prompt's too, as Minitron distils a cut model on whole text: more signal per step for
    # a student cut from the teacher's layers). Held-out answers are scored on responses either way.
    score: str = "response"
    # the teacher's logits kept per training token for forward KL: its top_k tokens and log-probabilities
    top_k: int = 64
    # The student's output vocabulary: 0 keeps the teacher's; N > 0 keeps the N tokens the training
    # sequences use most (and the special tokens) in its LM head, every other token sharing one learned
    # logit (edgekd.models.lm_vocab): a smaller head, faster decoding, the same tokenizer.
    vocab: int = 0
    # The LM head's weight bits in a 4-bit build (its error moves every next-token choice; llama.cpp's
    # 4-bit mixes keep the output tensor at 6 bits or more): 8, or 4 for the smallest file.
    head_bits: int = 8
    # GPTQ (neural-compressor, on the PyTorch student) as one more post-training rounding the export
    # chooses from by validation NLL: "auto" where the build has no quantization-aware training (whose
    # weights are on the grid already), "true", "false"; its Hessians on gptq_sequences training sequences.
    gptq: str = "auto"
    gptq_sequences: int = 128  # training sequences GPTQ estimates each layer's Hessian on
    # Parity of a quantized graph: its smallest next-token top-1 agreement with its PyTorch model (the
    # fake-quant student, or the FP32 one for post-training rounding) on the parity prompts. onnxruntime
    # rounds activations to 8 bits inside its weight-only kernels, which flips near-ties among the
    # vocabulary at a few percent of positions even with 8-bit weights; 4-bit weights of a weak student
    # flip more. The floors catch a broken graph; the report's perplexity judges the rest.
    int8_min_agreement: float = 0.9
    int4_min_agreement: float = 0.6  # the same floor for a 4-bit build
    # The benchmark, as llama-bench reports it: prefill tokens/s and time to first token at each prompt
    # length (capped to the models' context), decode tokens/s over bench_new_tokens, repeats runs each.
    bench_prompt_tokens: list[int] = field(default_factory=lambda: [128, 512])
    bench_new_tokens: int = 128  # decode tokens/s is timed over this many greedy new tokens
    bench_repeats: int = 5  # runs of each timing (mean and std)
    # held-out prompts the models answer greedily in the report (exact match, ROUGE-L); 0: all test prompts
    eval_prompts: int = 64

    def __post_init__(self):
        _check(self.chat in ("auto", "true", "false"), "chat", "'auto', 'true' or 'false'", self.chat)
        _check(self.generate >= 0, "generate", ">= 0 (0: no generated data)", self.generate)
        _check(self.temperature >= 0, "temperature", ">= 0 (0: greedy)", self.temperature)
        _check(0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        _check(self.max_new_tokens >= 1, "max_new_tokens", ">= 1", self.max_new_tokens)
        _check(self.min_tokens >= 0, "min_tokens", ">= 0", self.min_tokens)
        _check(0 < self.max_repeat <= 1, "max_repeat", "in (0, 1] (1: keep every response)", self.max_repeat)
        _check(self.min_logprob <= 0, "min_logprob", "<= 0 (a mean log-probability; -inf keeps all)", self.min_logprob)
        _check(0 <= self.on_policy <= 1, "on_policy", "in [0, 1]", self.on_policy)
        _check(self.score in ("all", "response"), "score", "'all' or 'response'", self.score)
        _check(1 <= self.top_k <= 1024, "top_k", "in [1, 1024]", self.top_k)
        _check(self.vocab >= 0, "vocab", ">= 0 (0: the teacher's whole vocabulary)", self.vocab)
        _check(self.head_bits in (4, 8), "head_bits", "4 or 8", self.head_bits)
        _check(self.gptq in ("auto", "true", "false"), "gptq", "'auto', 'true' or 'false'", self.gptq)
        _check(self.gptq_sequences >= 1, "gptq_sequences", ">= 1", self.gptq_sequences)
        for k in ("int8_min_agreement", "int4_min_agreement"):
            _check(0 <= getattr(self, k) <= 1, k, "in [0, 1]", getattr(self, k))
        if self.pattern:
            import re

            try:
                re.compile(self.pattern)
            except re.error as e:
                raise RecipeError(f"lm.pattern {self.pattern!r} is not a regular expression ({e})") from None
        if self.filter:
            _check(self.filter.count(":") == 1 and all(self.filter.split(":")), "filter", "package.module:function",
                   self.filter)
        _check(bool(self.bench_prompt_tokens) and all(isinstance(n, int) and n >= 1 for n in self.bench_prompt_tokens),
               "bench_prompt_tokens", "a list of token counts >= 1", self.bench_prompt_tokens)
        _check(self.bench_new_tokens >= 2, "bench_new_tokens", ">= 2", self.bench_new_tokens)
        _check(self.bench_repeats >= 1, "bench_repeats", ">= 1", self.bench_repeats)
        _check(self.eval_prompts >= 0, "eval_prompts", ">= 0 (0: every test prompt)", self.eval_prompts)
