"""Distillation losses. Each docstring gives the formula, the shapes and the paper."""

from __future__ import annotations


def kd_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float):
    """Knowledge distillation (Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network").

        L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    student_logits s, teacher_logits t: (B, K); labels y: (B,) int64. KL is averaged over the batch.
    The T^2 factor keeps the soft-target gradients' magnitude independent of T (Hinton et al., sec. 2).
    """
    import torch.nn.functional as F

    T = temperature
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()  # bf16 autocast: the loss in fp32
    soft = F.kl_div(
        F.log_softmax(student_logits / T, dim=1),
        F.log_softmax(teacher_logits / T, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels) if alpha < 1 else student_logits.new_zeros(())
    return alpha * T * T * soft + (1 - alpha) * hard


# Feature losses for text encoders. Each is selected by the recipe field of the same name
# (distill.embedding_cos = 1.0, ...) and takes the student's and the teacher's features (dicts made by
# edgekd.models.hf_text.TextEncoder.features) plus the attention mask.

from .registry import Registry  # noqa: E402

feature_losses: Registry = Registry("distillation loss")


@feature_losses.register("embedding_mse")
def embedding_mse(s: dict, t: dict, mask, **_):
    """Squared distance of sentence embeddings (the loss of Reimers & Gurevych 2020, "Making Monolingual
    Sentence Embeddings Multilingual using Knowledge Distillation"):

        L = mean_b || e_s[b] - e_t[b] ||^2        e_s, e_t: (B, D)
    """
    return (s["embedding"] - t["embedding"]).pow(2).sum(-1).mean()


@feature_losses.register("embedding_cos")
def embedding_cos(s: dict, t: dict, mask, **_):
    """Cosine distance of sentence embeddings (the cosine term of DistilBERT's loss, Sanh et al. 2019,
    "DistilBERT, a distilled version of BERT", applied to the pooled embedding):

        L = mean_b (1 - cos(e_s[b], e_t[b]))      e_s, e_t: (B, D)
    """
    import torch.nn.functional as F

    return (1 - F.cosine_similarity(s["embedding"], t["embedding"], dim=-1)).mean()


@feature_losses.register("hidden_mse")
def hidden_mse(s: dict, t: dict, mask, *, layer_map: dict[int, int], proj=None, **_):
    """Hidden-state distillation (TinyBERT, Jiao et al. 2020, eq. 8) over a layer map m:

        L = 1/|m| sum_{i in m} mean_{b, tokens} || W h_s^i - h_t^{m(i)} ||^2 / D_t

    h_s^i: (B, S, D_s) output of student layer i (1-based; 0 = embeddings), h_t^j: (B, S, D_t);
    W: (D_s -> D_t), a learned projection where widths differ (identity otherwise). Padding
    tokens (mask 0) do not count."""
    m = mask.unsqueeze(-1).to(s["hidden"][0].dtype)  # (B, S, 1)
    total = 0.0
    for i, j in layer_map.items():
        hs = s["hidden"][i]
        if proj is not None:
            hs = proj(hs)
        ht = t["hidden"][j]
        total = total + ((hs - ht).pow(2) * m).sum() / (m.sum() * ht.shape[-1])
    return total / len(layer_map)


@feature_losses.register("attention_kl")
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


@feature_losses.register("similarity_mse")
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
