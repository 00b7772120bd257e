"""A layer-subset student whose MLPs keep the channels its data uses most (student.keep_intermediate).

Depth pruning removes whole layers; width pruning keeps every kept layer and removes the MLP channels
that contribute least to its output, which Minitron found to lose less than depth pruning at the same
parameter count once the student is distilled (Muralidharan et al. 2024, "Compact Language Models via
Pruning and Knowledge Distillation", sec. 2.2 and 4). A gated MLP is

    y = W_down (act(W_gate x) * (W_up x))     W_gate, W_up: (I, H), W_down: (H, I)

and channel i adds a_i * W_down[:, i] to y, where a = act(W_gate x) * (W_up x) is the down projection's
input. Its importance is the mean size of that addition over the training tokens,

    score_i = E_t |a_i(t)| * ||W_down[:, i]||_2            (per layer: (I,))

(Minitron's activation-based importance, weighted by the output column as Wanda weighs |W| by the
input's norm, Sun et al. 2023). Each layer keeps its own top `keep` channels, in their order; every layer
keeps the same number, since a Hugging Face config has one intermediate_size."""

from __future__ import annotations

import numpy as np

from ..errors import RecipeError

_GATED = ("gate_proj", "up_proj", "down_proj")


def _mlps(model) -> list:
    """Each decoder layer's gated MLP (Llama, Mistral, Qwen2, Gemma, SmolLM: gate_proj, up_proj, down_proj)."""
    from .hf_text import find_layers

    _, layers = find_layers(model)
    mlps = [getattr(layer, "mlp", None) for layer in layers]
    if not all(m is not None and all(hasattr(m, p) for p in _GATED) for m in mlps):
        raise RecipeError(f"student.keep_intermediate prunes gated MLPs (gate_proj, up_proj, down_proj: Llama, Mistral, "
                          f"Qwen2, Gemma); {type(model).__name__}'s layers have none: set student.keep_intermediate = 0")
    return mlps


def intermediate(model) -> int:
    """The MLP width of `model`'s layers."""
    return int(_mlps(model)[0].down_proj.weight.shape[1])


def importance(model, seqs, *, n: int = 64, max_len: int = 512, device: str = "cpu") -> list[np.ndarray]:
    """Per layer, (I,) score_i over the tokens of the first `n` sequences (module docstring)."""
    import torch

    mlps = _mlps(model)
    sums = [torch.zeros(m.down_proj.weight.shape[1], dtype=torch.float64) for m in mlps]
    count = 0

    def hook(i):
        def pre(_, args):  # args[0]: (1, T, I), the down projection's input
            sums[i] += args[0][0].detach().float().abs().sum(0).double().cpu()
        return pre

    was = next(model.parameters()).device
    handles = [m.down_proj.register_forward_pre_hook(hook(i)) for i, m in enumerate(mlps)]
    model.to(device)
    try:
        with torch.no_grad():
            for ids in seqs.ids[:n]:
                x = torch.as_tensor(np.asarray(ids)[None, :max_len], dtype=torch.long, device=device)
                model(input_ids=x)
                count += x.shape[1]
    finally:
        for h in handles:
            h.remove()
        model.to(was)
    return [(s / max(count, 1)).numpy() * w for s, w in zip(sums, weight_scores(model))]


def weight_scores(model) -> list[np.ndarray]:
    """Per layer, (I,) ||W_down[:, i]||_2: a data-free stand-in for `importance` (a model checked before
    the data exists, where only the pruned shape matters)."""
    return [m.down_proj.weight.detach().float().norm(dim=0).double().cpu().numpy() for m in _mlps(model)]


def choose(scores: list[np.ndarray], keep: int) -> list[np.ndarray]:
    """Per layer, the indices of its `keep` highest-scoring channels, ascending."""
    return [np.sort(np.argsort(-s, kind="stable")[:keep]) for s in scores]


def prune(model, kept: list[np.ndarray]) -> None:
    """In place: each layer's MLP reduced to its `kept` channels (rows of gate and up, columns of down),
    and the config's intermediate size set to match, so save_pretrained and the exporter see the new width."""
    import torch

    mlps = _mlps(model)
    if len(kept) != len(mlps):
        raise RecipeError(f"{len(kept)} channel sets for {len(mlps)} layers")
    for m, idx in zip(mlps, kept):
        i = torch.as_tensor(idx, dtype=torch.long)
        for name, dim in (("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)):
            old = getattr(m, name)
            new = torch.nn.Linear(old.in_features if dim == 0 else len(idx), len(idx) if dim == 0 else old.out_features,
                                  bias=old.bias is not None, dtype=old.weight.dtype, device=old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight.index_select(dim, i))
                if old.bias is not None:
                    new.bias.copy_(old.bias.index_select(0, i) if dim == 0 else old.bias)
            setattr(m, name, new)
        if hasattr(m, "intermediate_size"):
            m.intermediate_size = len(idx)
    width = len(kept[0])
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "intermediate_size"):
            cfg.intermediate_size = width
