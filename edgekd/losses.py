"""Distillation losses, one registry of `Loss` records. Each docstring gives the formula, the shapes and
the paper; a recipe turns losses on by name (distill.losses = {kd = 1.0, rkd_angle = 2.0}).

Every loss is called the same way, `fn(s, t, mask, **options)`: s and t are the student's and the
teacher's features, dicts keyed by what losses read ("logits" (B, K); "embedding" (B, D), the
penultimate or pooled representation; text "hidden" and "attention", as
edgekd.models.hf_text.TextEncoder.features makes them; images "feature_maps", edgekd.features.Hints);
mask is the attention mask (text) or None (images); options are labels, temperature, alpha (kd),
layer_map and proj (tinybert_hidden), and each loss ignores the others. Language models ("lm") read
"token_logits": (N, V), one row per scored token of the batch (a response's tokens), and labels (N,),
the next tokens; the teacher's side is its full logits (online), or its cached top-k as "topk_ids" and
"topk_logprobs", (N, k) each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .errors import RecipeError
from .registry import Registry

FAMILIES = ("response", "feature", "relation")
READS = ("logits", "embedding", "hidden", "attention", "feature_maps", "token_logits")
KINDS = ("image", "text", "lm")


@dataclass(frozen=True)
class Loss:
    name: str
    fn: Callable
    family: str  # "response": the teacher's outputs; "feature": its intermediate representations;
    # "relation": its relations between the samples of a batch (distill.method picks a family)
    reads: str  # which feature of both models it reads, one of READS
    online: bool  # what it reads is never among the teacher's cached targets: the teacher runs in the
    # step (a task also runs it for a loss reading what its targets do not hold: a classifier's embedding)
    kinds: tuple[str, ...]  # the data kinds it applies to ("image", "text")
    # its weight when the recipe does not name it: a response loss always, a feature or relation loss
    # when distill.method chooses its family without naming any of the family's losses
    default: float = 0.0

    def __post_init__(self):
        if self.family not in FAMILIES or self.reads not in READS or not self.kinds or not set(self.kinds) <= set(KINDS):
            raise ValueError(f"loss {self.name}: family {self.family!r} (one of {FAMILIES}), reads {self.reads!r} "
                             f"(one of {READS}), kinds {self.kinds!r} (some of {KINDS})")


registry: Registry[Loss] = Registry("distillation loss", error=RecipeError)

# Old recipe names: hidden_mse was one key for two losses, told apart by the data.
ALIASES = {"hidden_mse": {"image": "fitnets_hint", "text": "tinybert_hidden"}}


def register(*, family: str, reads: str, kinds: tuple[str, ...], online: bool = False, default: float = 0.0):
    """Register the decorated function as the loss of its own name."""
    def add(fn):
        registry.register(fn.__name__)(Loss(fn.__name__, fn, family, reads, online, tuple(kinds), default))
        return fn

    return add


def get(name: str, kind: str = "") -> Loss:
    """The loss a recipe's `name` means. An old name is resolved by the data's `kind` ("image", "text");
    without one, by its first meaning (both meanings of hidden_mse are feature losses)."""
    if name in ALIASES:
        name = ALIASES[name].get(kind) or next(iter(ALIASES[name].values()))
    return registry.get(name)


def names() -> list[str]:
    return registry.names()


def misfit(loss: Loss, task) -> str:
    """Why `task` (an edgekd.tasks.Task) cannot train a student with `loss`, or ""."""
    if task.kind not in loss.kinds:
        return f"applies to {' and '.join(loss.kinds)} tasks, not task '{task.name}'"
    if loss.reads == "logits" and task.response != "logits":
        return f"reads logits, and the students of task '{task.name}' answer with {task.response}s"
    return ""


def fitting(task, *, family: str = "") -> list[str]:
    """The names of the losses (of `family`, when given) `task` can train a student with."""
    return [n for n in names() if not misfit(get(n), task) and family in ("", get(n).family)]


# response ------------------------------------------------------------------------------------------

@register(family="response", reads="logits", kinds=("image", "text"), default=1.0)
def kd(s: dict, t: dict, mask, *, labels, temperature: float, alpha: float, **_):
    """Knowledge distillation of the logits (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a
    Neural Network"); classifiers learn it unless distill.losses sets kd = 0:

        L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    s = s["logits"], t = t["logits"]: (B, K); labels y: (B,) int64. KL is averaged over the batch.
    The T^2 factor keeps the soft-target gradients' magnitude independent of T (Hinton et al., sec. 2).
    """
    import torch.nn.functional as F

    T = temperature
    student_logits, teacher_logits = s["logits"].float(), t["logits"].float()  # bf16 autocast: the loss in fp32
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=1),
        F.log_softmax(teacher_logits / T, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels) if alpha < 1 else student_logits.new_zeros(())
    return alpha * T * T * soft + (1 - alpha) * hard


@register(family="response", reads="embedding", kinds=("text",))
def embedding_mse(s: dict, t: dict, mask, **_):
    """Squared distance of sentence embeddings (the loss of Reimers & Gurevych 2020, "Making Monolingual
    Sentence Embeddings Multilingual using Knowledge Distillation"):

        L = mean_b || e_s[b] - e_t[b] ||^2        e_s, e_t: (B, D)
    """
    return (s["embedding"] - t["embedding"]).pow(2).sum(-1).mean()


@register(family="response", reads="embedding", kinds=("text",))
def embedding_cos(s: dict, t: dict, mask, **_):
    """Cosine distance of sentence embeddings (the cosine term of DistilBERT's loss, Sanh et al. 2019,
    "DistilBERT, a distilled version of BERT", applied to the pooled embedding):

        L = mean_b (1 - cos(e_s[b], e_t[b]))      e_s, e_t: (B, D)
    """
    import torch.nn.functional as F

    return (1 - F.cosine_similarity(s["embedding"], t["embedding"], dim=-1)).mean()


# response of language models: one distribution per scored token ------------------------------------

def _hard(logits, labels, alpha: float):
    import torch.nn.functional as F

    return F.cross_entropy(logits, labels) if alpha < 1 else logits.new_zeros(())


def logprob_reader(s: dict, T: float = 1.0):
    """ids (N, k) -> the student's log-softmax at temperature T read at those ids, (N, k), from its
    (N, V) s["token_logits"], or from a trimmed head's compact (N, K + 1) s["compact_logits"]
    (edgekd.models.lm_vocab: the kept logits, then the floor that V - K ids share), whose normaliser is

        log Z = logsumexp(z_kept / T, floor / T + log(V - K))

    so that a trimmed id reads floor / T - log Z: exact, without a (N, V) tensor."""
    import torch.nn.functional as F

    if "compact_logits" not in s:
        ls = F.log_softmax(s["token_logits"].float() / T, dim=-1)  # (N, V)
        return lambda ids: ls.gather(1, ids)
    c = s["compact_logits"].float() / T  # (N, K + 1)
    shared = c.new_zeros(c.shape[1])
    shared[-1] = s["log_trimmed"]
    lz = (c + shared).logsumexp(-1, keepdim=True)  # (N, 1)
    cols = s["columns"]  # (V,) id -> column
    return lambda ids: c.gather(1, cols[ids]) - lz


def lm_cross_entropy(s: dict, labels):
    """Next-token cross-entropy from either form of the student's logits (logprob_reader)."""
    import torch.nn.functional as F

    if "compact_logits" not in s:
        return F.cross_entropy(s["token_logits"].float(), labels)
    return -logprob_reader(s)(labels[:, None]).mean()


@register(family="response", reads="token_logits", kinds=("lm",), default=1.0)
def forward_kl(s: dict, t: dict, mask, *, labels, temperature: float, alpha: float, **_):
    """Token-level knowledge distillation (Hinton et al. 2015 per next-token distribution; Sanh et al.
    2019, DistilBERT; Kim & Rush 2016, "Sequence-Level Knowledge Distillation", word-level KD):

        L = alpha * T^2 * mean_n KL(p_t[n] || q_s[n]) + (1 - alpha) * CE(s[n], y[n])

    s["token_logits"]: (N, V), the student's logits at the N scored tokens (or a trimmed head's compact
    form, logprob_reader); labels y: (N,). With the
    teacher's full logits t["token_logits"] (N, V), the exact KL at temperature T. With its cached top-k
    (t["topk_ids"], t["topk_logprobs"]: (N, k), as Arcee's DistillKit stores them), p_t is renormalised
    over its k tokens and q_s is the student's full softmax read at those ids:
    KL = sum_k p_t[k] (log p_t[k] - log q_s[k]) >= 0, which is the exact KL when the top-k holds all the
    teacher's mass (k = 64 holds > 0.99 of it on most tokens of a small LM)."""
    import torch.nn.functional as F

    T = temperature
    if "token_logits" in t:
        ls = F.log_softmax(s["token_logits"].float() / T, dim=-1)  # (N, V)
        lt = F.log_softmax(t["token_logits"].float() / T, dim=-1)
        soft = F.kl_div(ls, lt, reduction="batchmean", log_target=True)
    else:
        lt = F.log_softmax(t["topk_logprobs"].float() / T, dim=-1)  # (N, k): renormalised over the top-k
        soft = (lt.exp() * (lt - logprob_reader(s, T)(t["topk_ids"].long()))).sum(-1).mean()
    hard = lm_cross_entropy(s, labels) if alpha < 1 else soft.new_zeros(())
    return alpha * T * T * soft + (1 - alpha) * hard


@register(family="response", reads="token_logits", kinds=("lm",), online=True)
def reverse_kl(s: dict, t: dict, mask, *, labels, temperature: float, alpha: float, **_):
    """Reverse KL, the student's distribution against the teacher's (Gu et al. ICLR 2024, "MiniLLM:
    Knowledge Distillation of Large Language Models"; here per token on the training sequences, the
    form DistiLLM (Ko et al. 2024) compares, not MiniLLM's policy gradient over whole samples):

        L = alpha * T^2 * mean_n KL(q_s[n] || p_t[n]) + (1 - alpha) * CE(s[n], y[n])

    s["token_logits"], t["token_logits"]: (N, V). Mode-seeking: the student puts its mass on the
    teacher's likeliest tokens instead of spreading it over all of them, which suits a small student.
    Needs the teacher's full distribution: the teacher runs in the step."""
    import torch.nn.functional as F

    T = temperature
    ls = F.log_softmax(s["token_logits"].float() / T, dim=-1)
    lt = F.log_softmax(t["token_logits"].float() / T, dim=-1)
    soft = (ls.exp() * (ls - lt)).sum(-1).mean()
    return alpha * T * T * soft + (1 - alpha) * _hard(s["token_logits"].float(), labels, alpha)


@register(family="response", reads="token_logits", kinds=("lm",), online=True)
def gkd_jsd(s: dict, t: dict, mask, *, labels, temperature: float, alpha: float, beta: float = 0.5, **_):
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al. ICLR 2024, "On-Policy Distillation
    of Language Models: Learning from Self-Generated Mistakes", eq. 3; TRL's GKDTrainer):

        M = beta p_t + (1 - beta) q_s
        JSD_beta = beta KL(p_t || M) + (1 - beta) KL(q_s || M)
        L = alpha * T^2 * mean_n JSD_beta[n] + (1 - alpha) * CE(s[n], y[n])

    s["token_logits"], t["token_logits"]: (N, V); beta = 0.5 (GKD's and TRL's default) is the symmetric
    JSD, between forward KL (beta -> 0) and reverse KL (beta -> 1) in behaviour. With lm.on_policy > 0
    the sequences of that share of batches are the student's own samples (GKD's lambda)."""
    import math

    import torch
    import torch.nn.functional as F

    T = temperature
    ls = F.log_softmax(s["token_logits"].float() / T, dim=-1)
    lt = F.log_softmax(t["token_logits"].float() / T, dim=-1)
    lm = torch.logsumexp(torch.stack([lt + math.log(beta), ls + math.log(1 - beta)]), dim=0)  # log M: (N, V)
    jsd = beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    return alpha * T * T * jsd.mean() + (1 - alpha) * _hard(s["token_logits"].float(), labels, alpha)


# feature -------------------------------------------------------------------------------------------

@register(family="feature", reads="feature_maps", kinds=("image",), online=True, default=1.0)
def fitnets_hint(s: dict, t: dict, mask, **_):
    """Hint learning of FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets", eq. 3) over
    several guided/hint layer pairs:

        L = 1/P sum_p mean_{b, c, h, w} (r_p(F_s^p) - F_t^p)^2

    s["feature_maps"], t["feature_maps"]: P maps each, r_p(F_s^p) and F_t^p, both (B, C_t, H, W): the
    student's feature map after its learned regressor r_p (a 1x1 convolution from C_s to C_t channels
    where widths differ) and the teacher's, pooled to the smaller of the two spatial sizes
    (edgekd.features.Hints). FitNets trains the hint first and KD after; here the hint is added to the
    KD loss from the first step, as most later uses of it do. The mean, not FitNets' 1/2 sum, keeps the
    weight independent of map size. Weight 1 when distill.method = "feature" names no feature loss."""
    total = 0.0
    for fs, ft in zip(s["feature_maps"], t["feature_maps"]):
        total = total + (fs.float() - ft.float()).pow(2).mean()  # bf16 autocast: the loss in fp32
    return total / len(s["feature_maps"])


@register(family="feature", reads="hidden", kinds=("text",), online=True, default=1.0)
def tinybert_hidden(s: dict, t: dict, mask, *, layer_map: dict[int, int], proj=None, **_):
    """Hidden-state distillation (TinyBERT, Jiao et al. 2020, eq. 8) over a layer map m:

        L = 1/|m| sum_{i in m} mean_{b, tokens} || W h_s^i - h_t^{m(i)} ||^2 / D_t

    h_s^i = s["hidden"][i]: (B, S, D_s) output of student layer i (1-based; 0 = embeddings), h_t^j:
    (B, S, D_t); W: (D_s -> D_t), a learned projection where widths differ (identity otherwise). Padding
    tokens (mask 0) do not count. Weight 1 (TinyBERT's) when distill.method = "feature" names no
    feature loss."""
    m = mask.unsqueeze(-1).to(s["hidden"][0].dtype)  # (B, S, 1)
    total = 0.0
    for i, j in layer_map.items():
        hs = s["hidden"][i]
        if proj is not None:
            hs = proj(hs)
        ht = t["hidden"][j]
        total = total + ((hs - ht).pow(2) * m).sum() / (m.sum() * ht.shape[-1])
    return total / len(layer_map)


@register(family="feature", reads="attention", kinds=("text",), online=True)
def attention_kl(s: dict, t: dict, mask, **_):
    """Self-attention distribution transfer of the last layer (MiniLM, Wang et al. 2020, eq. 4):

        L = 1/(H S) sum_{h, i} KL(A_t[h, i, :] || A_s[h, i, :])

    A_s: (B, H_s, S, S), A_t: (B, H_t, S, S) softmax attention probabilities of the last layer;
    averaged over heads and valid query positions. MiniLM needs as many student heads as teacher heads;
    where the counts differ, both are averaged over heads first (one distribution per query)."""
    a_s, a_t = s["attention"], t["attention"]
    if a_s.shape[1] != a_t.shape[1]:
        a_s, a_t = a_s.mean(1, keepdim=True), a_t.mean(1, keepdim=True)
    eps = 1e-9
    kl = (a_t * ((a_t + eps).log() - (a_s + eps).log())).sum(-1)  # (B, H, S)
    q = mask.unsqueeze(1).to(kl.dtype)  # (B, 1, S): padded queries do not count
    return (kl * q).sum() / (q.sum() * kl.shape[1])


# relation: on the penultimate (images) or pooled (text) embeddings -----------------------------------

@register(family="relation", reads="embedding", kinds=("image", "text"))
def similarity_mse(s: dict, t: dict, mask, **_):
    """Relational distillation of the batch's similarity structure (Tung & Mori 2019, "Similarity-
    Preserving Knowledge Distillation"; the angle-wise idea of Park et al. 2019, RKD), on cosines:

        G_s = norm(e_s) norm(e_s)^T,  G_t = norm(e_t) norm(e_t)^T        (B, B)
        L = mean_{i,j} (G_s[i, j] - G_t[i, j])^2

    It teaches which texts are near each other, what top-k neighbour search depends on, beyond
    matching each embedding alone."""
    import torch.nn.functional as F

    es, et = F.normalize(s["embedding"], dim=-1), F.normalize(t["embedding"], dim=-1)  # (B, D)
    return (es @ es.T - et @ et.T).pow(2).mean()


def _pdist(e):
    """(B, D) -> (B, B) Euclidean distances, exactly 0 on the diagonal (no sqrt of 0 in the gradient)."""
    import torch

    d2 = (e.unsqueeze(0) - e.unsqueeze(1)).pow(2).sum(-1)  # (B, B)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return torch.where(off, d2.clamp(min=1e-12).sqrt(), torch.zeros_like(d2)), off


@register(family="relation", reads="embedding", kinds=("image", "text"), default=1.0)
def rkd_distance(s: dict, t: dict, mask, **_):
    """Distance-wise relational distillation (RKD-D; Park, Kim, Lu, Cho 2019, "Relational Knowledge
    Distillation", eq. 4-5): the student keeps the teacher's pairwise distances, each scaled by its
    model's mean distance, so the widths and scales of the two embeddings need not match:

        psi(e)_ij = ||e_i - e_j|| / mu(e),   mu(e) = mean_{i != j} ||e_i - e_j||
        L = mean_{i != j} huber(psi(e_s)_ij - psi(e_t)_ij)              (Huber with delta 1)

    e_s: (B, D_s), e_t: (B, D_t), the penultimate embeddings (s["embedding"], t["embedding"]). Weight 1,
    that of Park et al.'s released code, when distill.method = "relation" names no relation loss."""
    import torch.nn.functional as F

    ds, off = _pdist(s["embedding"])
    dt, _ = _pdist(t["embedding"].detach())
    ds, dt = ds[off], dt[off]  # (B (B - 1),)
    return F.smooth_l1_loss(ds / ds.mean().clamp(min=1e-12), dt / dt.mean().clamp(min=1e-12))


@register(family="relation", reads="embedding", kinds=("image", "text"), default=2.0)
def rkd_angle(s: dict, t: dict, mask, **_):
    """Angle-wise relational distillation (RKD-A; Park et al. 2019, eq. 6-7): the student keeps the
    angles the teacher's embeddings form in every triplet:

        psi(e)_ijk = <u_ij, u_kj>,   u_ij = (e_i - e_j) / ||e_i - e_j||   (cosine of the angle at e_j)
        L = mean_{i, j, k} huber(psi(e_s)_ijk - psi(e_t)_ijk)           (Huber with delta 1)

    e_s: (B, D_s), e_t: (B, D_t). As in the paper's code the mean runs over all B^3 triplets; those
    with i = j or k = j have a zero difference vector, psi = 0 for both models. Weight 2, that of the
    paper's released code, when distill.method = "relation" names no relation loss."""
    import torch.nn.functional as F

    def angles(e):
        u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=-1)  # (B, B, D): u[j, i] = unit(e_i - e_j)
        return u @ u.transpose(1, 2)  # (B, B, B): [j, i, k] = <u_ij, u_kj>

    return F.smooth_l1_loss(angles(s["embedding"]), angles(t["embedding"].detach()))
