"""Tiny causal language models with random weights, written as Hugging Face folders (config.json,
model.safetensors, tokenizer.json with a chat template), for the text-generation tests: Llama- and
Qwen2-class, built offline in a second."""

from __future__ import annotations

import json
from pathlib import Path

# What the tiny tokenizer is trained on and the tests' prompts come from: short Python functions and
# one-line summaries, the shape of the SmolLM2 example's data.
CORPUS = [
    ("def add(a, b):\n    return a + b", "Return the sum of two numbers."),
    ("def is_even(n):\n    return n % 2 == 0", "Tell whether a number is even."),
    ("def first(items):\n    return items[0]", "Return the first item of a list."),
    ("def upper(text):\n    return text.upper()", "Return the text in capital letters."),
    ("def square(x):\n    return x * x", "Return a number times itself."),
    ("def last(items):\n    return items[-1]", "Return the last item of a list."),
    ("def count(items, x):\n    return items.count(x)", "Count how often a value occurs."),
    ("def strip(text):\n    return text.strip()", "Remove the spaces around a text."),
]
FAMILIES = ("llama", "qwen2")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tokenizer(folder: Path, *, vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on CORPUS, saved in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([t for pair in CORPUS for t in pair] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def tiny_lm(folder: Path, family: str = "llama", *, layers: int = 4, hidden: int = 64, seed: int = 0) -> Path:
    """A random-weight causal LM of `family` ("llama" or "qwen2") with tied embeddings and grouped-query
    attention, and its tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(folder)
    config = AutoConfig.for_model(
        family, vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    return folder


# tiny settings of a text-generation build: seconds of training, a few tokens of benchmark
TINY_LM = ["data.n_val=4", "data.n_test=4", "data.max_length=64", "distill.epochs=1", "distill.batch_size=4",
           "quantize.epochs=1", "lm.max_new_tokens=8", "lm.bench_prompt_tokens=16", "lm.bench_new_tokens=4",
           "lm.bench_repeats=1", "lm.eval_prompts=3", "lm.min_logprob=-100", "lm.max_repeat=1.0", "lm.min_tokens=0",
           "export.parity_samples=2", "quantize.block_size=16"]


def recipe(folder: Path, family: str) -> Path:
    """A text-generation recipe distilling a 2-layer student from a tiny `family` teacher on CORPUS."""
    teacher = tiny_lm(folder / "teacher", family)
    rows = [{"prompt": p, "summary": s} for p, s in CORPUS] * 3
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "edgekd.toml").write_text(f"""name = "tiny-{family}"
task = "text-generation"
device = "cpu"
[data]
source = "jsonl"
path = "data.jsonl"
text_field = "prompt"
response_field = "summary"
[teacher]
model = "hf:{teacher.name}"
[student]
model = "layer-subset"
layers = 2
[lm]
instruction = "Summarize this function in one line."
""")
    return folder / "edgekd.toml"
