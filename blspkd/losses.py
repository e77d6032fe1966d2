"""BLSP-KD losses (doc/method.md §5). Every function works on already selected rows, so callers only build
full-vocabulary logits for the rows a loss uses.

* ``kd_kl``: input_kl / response_kl,
      L = 1/R sum_r sum_v p_t(v|r) (log p_t(v|r) - log p_s(v|r)),   p_x = softmax(z_x / T)
* ``cif_quantity_loss``: L = 1/B sum_b | sum_t alpha_{b,t} / N_b - 1 |   (unscaled alphas)
* ``embedding_ce`` (warm start ``cif_ce``, our addition): CIF vector k predicts transcript token k against the LLM's
  frozen input-embedding matrix E with cosine logits, plus a log-norm matching term so the vectors stay in the
  embedding space in both direction and scale (the LLM cannot use vectors with the right direction and 5x the norm):
      L = CE(cos(v_k, E) / tau, y_k) + mean_k (log ||v_k|| - log ||E_{y_k}||)^2
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of temperature-softened distributions over rows (R, V), summed over V, mean over R.

    Computed in float32 whatever the input dtype. Zero rows give 0 (not NaN)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd_kl: student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
                         "logits must have the same shape")
    if student_logits.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) / student_logits.shape[0]


def cif_quantity_loss(alpha_sum: torch.Tensor, num_tokens: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |sum_t alpha_t / N - 1| (relative count error, so long and short utterances weigh
    alike)."""
    return (alpha_sum.float() / num_tokens.float() - 1.0).abs().mean()


def embedding_ce(vectors: torch.Tensor, targets: torch.Tensor, embedding: torch.Tensor,
                 temperature: float = 0.1, unit_embedding: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm-start loss of CIF vectors (R, H) against token ids (R,) with the frozen embedding matrix (V, H).

    ``unit_embedding``: ``embedding`` with unit rows, when the caller keeps it (the matrix is frozen: normalising
    49152 x 576 rows every step cost 44 ms of a 0.9-s CPU update). 1/tau scales the R unit vectors before the
    product, not the R x V logits. Returns ``(loss, accuracy)`` where accuracy is the fraction of rows whose nearest
    embedding (by cosine) is the target token."""
    v = vectors.float()
    e = embedding.float()
    if unit_embedding is None:
        unit_embedding = F.normalize(e, dim=-1)
    logits = (F.normalize(v, dim=-1) / temperature) @ unit_embedding.float().T
    ce = F.cross_entropy(logits, targets)
    norm_gap = torch.log(v.norm(dim=-1).clamp(min=1e-6)) - torch.log(e[targets].norm(dim=-1).clamp(min=1e-6))
    accuracy = (logits.argmax(-1) == targets).float().mean()
    return ce + norm_gap.pow(2).mean(), accuracy.detach()
