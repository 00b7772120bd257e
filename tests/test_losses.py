"""Every registered distillation loss: its record, its docstring, a finite scalar on random inputs of
the shapes it reads, and a known value."""
import re

import numpy as np
import pytest

from edgekd import losses

torch = pytest.importorskip("torch")
F = torch.nn.functional

OPTIONS = {"temperature": 2.0, "alpha": 0.5, "layer_map": {1: 2, 2: 3}}


def _random(reads: str, g) -> tuple:
    """Student and teacher features of the shapes a loss reads (B = 4), the mask, the labels."""
    B, K, S, D = 4, 5, 6, 8
    mask = torch.ones(B, S, dtype=torch.long)
    mask[0, 4:] = 0  # one padded text
    shapes = {"logits": (B, K), "embedding": (B, D), "token_logits": (B, K)}

    def make():
        if reads in shapes:
            return torch.randn(*shapes[reads], generator=g)
        if reads == "hidden":  # embeddings + 3 layers
            return [torch.randn(B, S, D, generator=g) for _ in range(4)]
        if reads == "attention":
            return torch.softmax(torch.randn(B, 2, S, S, generator=g), -1)
        return [torch.randn(B, 3, 7, 7, generator=g), torch.randn(B, 5, 4, 4, generator=g)]  # feature_maps

    return {reads: make()}, {reads: make()}, mask, torch.randint(0, K, (B,), generator=g)


@pytest.mark.parametrize("name", losses.names())
def test_every_loss_is_described(name):
    loss = losses.get(name)
    assert loss.name == name and loss.fn.__name__ == name
    assert loss.family in losses.FAMILIES and loss.reads in losses.READS
    assert loss.kinds and set(loss.kinds) <= set(losses.KINDS) and loss.default >= 0
    if loss.reads in ("hidden", "attention", "feature_maps"):
        assert loss.online  # never among cached targets
    elif loss.reads != "token_logits":  # a language model's full distribution is cached as its top-k only
        assert not loss.online
    doc = loss.fn.__doc__ or ""
    assert re.search(r"\bL = ", doc), "the docstring gives the formula (L = ...)"
    assert re.search(r"\b(19|20)\d\d\b", doc) and re.search(r"[A-Z][a-z]+", doc), "the docstring cites the paper"


@pytest.mark.parametrize("name", losses.names())
def test_every_loss_is_a_finite_scalar_on_random_inputs(name):
    loss = losses.get(name)
    g = torch.Generator().manual_seed(0)
    s, t, mask, y = _random(loss.reads, g)
    leaves = [s[loss.reads]] if torch.is_tensor(s[loss.reads]) else s[loss.reads]
    for leaf in leaves:
        leaf.requires_grad_(True)
    out = loss.fn(s, t, mask, labels=y, **OPTIONS)
    assert torch.is_tensor(out) and out.ndim == 0 and torch.isfinite(out)
    out.backward()  # the student's side learns from it
    grads = [leaf.grad for leaf in leaves if leaf.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_the_old_name_hidden_mse_means_the_datas_own_loss():
    assert losses.get("hidden_mse", "image").name == "fitnets_hint"
    assert losses.get("hidden_mse", "text").name == "tinybert_hidden"
    assert losses.get("hidden_mse").family == "feature"
    with pytest.raises(losses.RecipeError, match="did you mean 'rkd_angle'"):
        losses.get("rkd_angel")


# ---------------------------------------------------------------- known values

def _feats(emb, hidden=None, att=None):
    return {"embedding": torch.tensor(emb, dtype=torch.float32), "hidden": hidden, "attention": att}


def _known(name):
    """(student features, teacher features, mask, options, expected value) for each registered loss."""
    mask = torch.ones(2, 2, dtype=torch.long)
    if name == "kd":
        # alpha = 1: T^2 * KL(p_t || p_s) of one sample, by hand: softmax([1, .5, 0]/2) vs softmax([2, 0, -1]/2)
        a = np.exp([0.5, 0.25, 0.0]); a /= a.sum()
        b = np.exp([1.0, 0.0, -0.5]); b /= b.sum()
        s, t = {"logits": torch.tensor([[2.0, 0.0, -1.0]])}, {"logits": torch.tensor([[1.0, 0.5, 0.0]])}
        return s, t, None, {"labels": torch.tensor([0]), "temperature": 2.0, "alpha": 1.0}, 4 * float((a * np.log(a / b)).sum())
    if name == "fitnets_hint":
        # every element of the first pair differs by 3 (mean 9); the second pair (1, 0) against zeros: mean 1/2
        c = torch.tensor([[[[1.0]], [[0.0]]]])  # (1, 2, 1, 1)
        s = {"feature_maps": [torch.zeros(1, 2, 2, 2), c]}
        t = {"feature_maps": [torch.full((1, 2, 2, 2), 3.0), torch.zeros_like(c)]}
        return s, t, None, {}, (9 + 0.5) / 2
    if name == "embedding_mse":
        # ||(1,0)-(0,0)||^2 = 1, ||(1,1)-(1,1)||^2 = 0 -> mean 0.5
        return _feats([[1, 0], [1, 1]]), _feats([[0, 0], [1, 1]]), mask, {}, 0.5
    if name == "embedding_cos":
        # orthogonal -> 1 - 0 = 1; identical -> 0 -> mean 0.5
        return _feats([[1, 0], [1, 1]]), _feats([[0, 1], [2, 2]]), mask, {}, 0.5
    if name == "similarity_mse":
        # student: two orthogonal texts (cos 0); teacher: the same direction (cos 1). G differs by 1
        # in the 2 off-diagonal cells of 4 -> mean 0.5
        return _feats([[1, 0], [0, 2]]), _feats([[1, 1], [2, 2]]), mask, {}, 0.5
    if name == "tinybert_hidden":
        hs = [torch.zeros(2, 2, 3), torch.ones(2, 2, 3)]
        ht = [torch.zeros(2, 2, 3), torch.zeros(2, 2, 3), torch.full((2, 2, 3), 3.0)]
        m = torch.tensor([[1, 1], [1, 0]])  # the padded token does not count
        # student layer 1 -> teacher layer 2: (1 - 3)^2 = 4 per element
        return _feats([[0.0]], hs), _feats([[0.0]], ht), m, {"layer_map": {1: 2}}, 4.0
    if name == "attention_kl":
        a_t = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).expand(1, 1, 2, 2)
        a_s = torch.tensor([[0.25, 0.75], [1.0, 0.0]]).expand(1, 1, 2, 2)
        m = torch.ones(1, 2, dtype=torch.long)
        # row 0: 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75); row 1: 0 -> mean over 2 queries
        kl0 = 0.5 * np.log(2) + 0.5 * np.log(2 / 3)
        return _feats([[0.0]], att=a_s), _feats([[0.0]], att=a_t), m, {}, kl0 / 2
    # three points: the student's form a right angle at e_0, the teacher's lie on a line
    right, line = [[0, 0], [1, 0], [0, 1]], [[0, 0], [1, 0], [2, 0]]
    if name == "rkd_distance":
        # pair distances (01, 02, 12): student 1, 1, sqrt 2 (mean (2 + sqrt 2) / 3), teacher 1, 2, 1 (mean 4/3);
        # every scaled difference is below 1, so Huber = d^2 / 2; each pair counts twice (i, j and j, i)
        mu = (2 + np.sqrt(2)) / 3
        d = [1 / mu - 0.75, 1 / mu - 1.5, np.sqrt(2) / mu - 0.75]
        return _feats(right), _feats(line), None, {}, float(np.mean([x * x / 2 for x in d]))
    if name == "rkd_angle":
        # cosines that differ, of 27 triplets: at e_0 (1, 2) and (2, 1): 0 vs 1 (Huber 1/2); at e_1 (0, 2) and
        # (2, 0): 1/sqrt 2 vs -1 (Huber |d| - 1/2); at e_2 (0, 1) and (1, 0): 1/sqrt 2 vs 1 (Huber d^2 / 2)
        a, b = 1 / np.sqrt(2) + 1, 1 - 1 / np.sqrt(2)
        return _feats(right), _feats(line), None, {}, (2 * 0.5 + 2 * (a - 0.5) + 2 * b * b / 2) / 27
    if name in ("forward_kl", "reverse_kl", "gkd_jsd"):
        # one token, alpha = 1, T = 1: p = softmax([1, 0]), q = softmax([0, 0]) = (1/2, 1/2)
        p = np.exp([1.0, 0.0]); p /= p.sum()
        q = np.array([0.5, 0.5])
        m = (p + q) / 2
        want = {"forward_kl": (p * np.log(p / q)).sum(), "reverse_kl": (q * np.log(q / p)).sum(),
                "gkd_jsd": 0.5 * (p * np.log(p / m)).sum() + 0.5 * (q * np.log(q / m)).sum()}[name]
        s, t = {"token_logits": torch.tensor([[0.0, 0.0]])}, {"token_logits": torch.tensor([[1.0, 0.0]])}
        return s, t, None, {"labels": torch.tensor([0]), "temperature": 1.0, "alpha": 1.0}, float(want)
    raise AssertionError(f"no known value for loss {name}: add one")


@pytest.mark.parametrize("name", losses.names())
def test_every_loss_has_its_known_value(name):
    s, t, mask, kw, want = _known(name)
    assert float(losses.get(name).fn(s, t, mask, **kw)) == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_kd_limits():
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.0]])
    y = torch.tensor([0, 1])

    def kd(s_, t_, alpha):
        return losses.kd({"logits": s_}, {"logits": t_}, None, labels=y, temperature=2.0, alpha=alpha)

    assert torch.allclose(kd(s, t, 0.0), F.cross_entropy(s, y))  # alpha = 0: plain cross-entropy
    assert kd(s, s, 1.0).item() == pytest.approx(0.0, abs=1e-7)  # identical logits: the soft term vanishes
    pt, ps = F.softmax(t / 2, 1), F.softmax(s / 2, 1)  # alpha = 1: T^2 KL(p_t || p_s), batch mean
    assert kd(s, t, 1.0).item() == pytest.approx((4 * (pt * (pt.log() - ps.log())).sum(1).mean()).item(), rel=1e-6)


def test_attention_kl_with_different_head_counts_averages_heads():
    a = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    s = {"attention": a.mean(1, keepdim=True).expand(2, 2, 5, 5)}  # 2 heads whose mean equals the teacher's
    assert float(losses.attention_kl(s, {"attention": a}, torch.ones(2, 5))) == pytest.approx(0.0, abs=1e-6)


def test_forward_kl_from_the_cached_top_k_is_the_kl_over_those_tokens():
    """With the teacher's top-k (k = 2 of 3 tokens), p_t renormalised over them and the student's full
    softmax read at their ids; with all tokens cached it equals the full KL."""
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.zeros(4, dtype=torch.long)
    lt = F.log_softmax(t, -1)
    full = losses.forward_kl({"token_logits": s}, {"token_logits": t}, None, labels=y, temperature=1.0, alpha=1.0)
    v, i = lt.topk(3, -1)
    cached = losses.forward_kl({"token_logits": s}, {"topk_ids": i, "topk_logprobs": v}, None, labels=y,
                               temperature=1.0, alpha=1.0)
    assert float(cached) == pytest.approx(float(full), rel=1e-5)
    v, i = lt.topk(2, -1)
    two = losses.forward_kl({"token_logits": s}, {"topk_ids": i, "topk_logprobs": v}, None, labels=y,
                            temperature=1.0, alpha=1.0)
    pt = F.softmax(v, -1)
    want = (pt * (pt.log() - F.log_softmax(s, -1).gather(1, i))).sum(-1).mean()
    assert float(two) == pytest.approx(float(want), rel=1e-5) and float(two) >= 0


@pytest.mark.parametrize("T, alpha", [(1.0, 0.9), (2.0, 1.0), (1.0, 0.0)])
def test_a_trimmed_heads_compact_logits_give_the_full_losses(T, alpha):
    """A trimmed head's (N, K + 1) compact logits (kept ones, then the shared floor) give forward KL
    against the cached top-k and cross-entropy equal to those of its (N, V) logits, trimmed ids included
    (in labels and in the teacher's top-k), with the same gradients."""
    from edgekd.models.lm_vocab import _head_class

    g = torch.Generator().manual_seed(0)
    V, H, N = 50, 8, 12
    kept = torch.tensor([0, 3, 4, 9, 17, 30, 31, 49])
    head = _head_class()(torch.randn(len(kept), H, generator=g), kept, V, floor=-1.5)
    h = torch.randn(N, H, generator=g, requires_grad=True)
    y = torch.randint(0, V, (N,), generator=g)
    y[:3] = torch.tensor([1, 2, 5])  # trimmed labels
    lt, ids = F.log_softmax(torch.randn(N, V, generator=g), -1).topk(6, -1)
    t = {"topk_ids": ids, "topk_logprobs": lt}
    full = losses.forward_kl({"token_logits": head(h)}, t, None, labels=y, temperature=T, alpha=alpha)
    gf = torch.autograd.grad(full, [h, head.weight, head.floor])
    s = {"compact_logits": head.compact(h), "columns": head.columns, "log_trimmed": head.log_trimmed}
    comp = losses.forward_kl(s, t, None, labels=y, temperature=T, alpha=alpha)
    gc = torch.autograd.grad(comp, [h, head.weight, head.floor])
    assert float(comp) == pytest.approx(float(full), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(gf, gc))
    assert float(losses.lm_cross_entropy(s, y)) == pytest.approx(float(F.cross_entropy(head(h), y)), rel=1e-5)
