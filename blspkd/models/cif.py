"""Continuous integrate-and-fire (CIF) and the CFormer adapter (doc/method.md §3).

CIF turns T frames into exactly N token vectors. With per-frame weights alpha_t (zero on padding), the target count N
and the threshold beta (1.0 in the paper):

    alpha'_t = alpha_t * N / sum_t alpha_t                          (so that sum_t alpha'_t = N)
    c_t      = sum_{s<=t} alpha'_s / beta,        c_0 = 0
    w[k, t]  = max(0, min(c_t, k+1) - max(c_{t-1}, k)) * beta        for k < N-1
    w[N-1,t] = max(0, c_t - max(c_{t-1}, N-1)) * beta                 (the last token takes whatever is left)
    token_k  = sum_t w[k, t] * h_t

A frame whose alpha' exceeds the threshold contributes to several tokens, and no mass is lost. The weights are built
for all frames at once (cumsum, floor, clamp) and applied with index_add over the band of tokens each frame touches,
instead of the reference's Python loop over frames (``cif_weights`` gives the dense W[b, k, t] for inspection).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blspkd.models.speech_encoder import WhisperLayerStack


def integrate_and_fire(
    hidden: torch.Tensor,
    alphas: torch.Tensor,
    num_tokens: torch.Tensor | None = None,
    threshold: float = 1.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integrate ``hidden`` (B, T, C) with weights ``alphas`` (B, T) and fire ``num_tokens`` (B,) tokens per row.

    ``alphas`` must already be zero on padded frames. When ``num_tokens`` is None the count is predicted as
    ``max(1, round(sum_t alpha_t / threshold))``. Returns ``(tokens (B, N_max, C), token_mask (B, N_max) bool,
    num_tokens (B,) long)``; tokens beyond a row's count are zero. Differentiable with respect to ``hidden`` and
    ``alphas``; a tiny or zero alpha sum gives zero vectors (never NaN) because the divisor is clamped at ``eps``.
    """
    if hidden.dim() != 3 or alphas.shape != hidden.shape[:2]:
        raise ValueError(f"integrate_and_fire: expected hidden (B, T, C) and alphas (B, T), got "
                         f"{tuple(hidden.shape)} and {tuple(alphas.shape)}")
    alpha_sum = alphas.sum(dim=1)
    if num_tokens is None:
        num_tokens = torch.round(alpha_sum.detach() / threshold).clamp(min=1).long()
    else:
        num_tokens = num_tokens.to(device=alphas.device, dtype=torch.long)
        if bool((num_tokens < 1).any()):
            raise ValueError(f"integrate_and_fire: every num_tokens must be >= 1, got {num_tokens.tolist()} "
                             "(an empty transcript? drop it in data preparation)")
    # float64 for the weights: c_t reaches N (hundreds), where float32 rounding would shift token boundaries by ~1e-5
    a64 = alphas.double()
    scaled = a64 * (num_tokens.double() * threshold / a64.sum(dim=1).clamp(min=eps)).unsqueeze(1)
    cum = torch.cumsum(scaled, dim=1) / threshold  # (B, T): c_t in units of the threshold
    prev = cum - scaled / threshold  # c_{t-1}

    n_max = int(num_tokens.max())
    last = (num_tokens - 1).view(-1, 1)
    # Frame t only touches tokens floor(c_{t-1}) .. floor(c_t) (capped at the last token), so W is a narrow band with
    # about T + N non-zeros: build it as a sparse matrix (every frame's first token, plus the further tokens of the
    # frames that straddle a boundary) and apply it with one sparse-dense matmul. A dense (N x T) @ (T x C) product
    # does O(N*T*C) work and on a CPU was no faster than the frame loop it replaces.
    b_size, t_size, c_size = hidden.shape
    first = torch.minimum(torch.floor(prev).long().clamp(min=0), last)  # (B, T)
    top = torch.minimum(torch.floor(cum).long(), last)
    token_mask = torch.arange(n_max, device=hidden.device).view(1, -1) < num_tokens.view(-1, 1)

    def band(k, c, p, last_k):  # w[k, t] of the equations, for given token indices k
        kf = k.to(c.dtype)
        upper = torch.where(k == last_k, c, torch.minimum(c, kf + 1))
        return (upper - torch.maximum(p, kf)).clamp(min=0) * (k <= last_k) * threshold

    frame_ids = torch.arange(b_size * t_size, device=hidden.device).view(b_size, t_size)
    batch_ids = torch.arange(b_size, device=hidden.device).view(-1, 1).expand(b_size, t_size)
    rows, cols, vals = [(first + batch_ids * n_max).reshape(-1)], [frame_ids.reshape(-1)], \
        [band(first, cum, prev, last).reshape(-1)]
    straddle = top > first
    if bool(straddle.any()):
        bi, ti = straddle.nonzero(as_tuple=True)
        f_s, c_s, p_s, last_s = first[bi, ti], cum[bi, ti], prev[bi, ti], last[bi, 0]
        for j in range(1, int((top[bi, ti] - f_s).max()) + 1):
            k = f_s + j
            rows.append(k.clamp(max=n_max - 1) + bi * n_max)
            cols.append(frame_ids[bi, ti])
            vals.append(band(k, c_s, p_s, last_s))
    # sparse matmul has no bf16/fp16 kernels: run it in fp32 (fp64 stays fp64) outside autocast, return hidden's dtype
    work = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    weights = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals).to(work),
                                      (b_size * n_max, b_size * t_size), check_invariants=False)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        tokens = torch.sparse.mm(weights, hidden.reshape(-1, c_size).to(work)).to(hidden.dtype)
    tokens = tokens.view(hidden.shape[0], n_max, hidden.shape[2])
    return tokens, token_mask, num_tokens


def cif_weights(alphas: torch.Tensor, num_tokens: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """The dense weights W (B, N_max, T) of the equations above (float64), so that tokens = W @ hidden. For tests and
    inspection; ``integrate_and_fire`` uses the banded form."""
    eye = torch.eye(alphas.shape[1], dtype=torch.float64, device=alphas.device)
    hidden = eye.unsqueeze(0).expand(alphas.shape[0], -1, -1)
    return integrate_and_fire(hidden, alphas.double(), num_tokens, threshold)[0]


def pool_frames(hidden: torch.Tensor, mask: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average groups of ``factor`` consecutive valid frames (doc/method.md §9): (B, T, C) -> (B, ceil(T/factor), C).

    Padded frames are left out of each average, so a row's result does not depend on how much padding follows it.
    """
    if factor == 1:
        return hidden, mask
    b, t, c = hidden.shape
    pad = (-t) % factor
    m = mask.to(hidden.dtype)
    if pad:
        hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
        m = nn.functional.pad(m, (0, pad))
    summed = (hidden * m.unsqueeze(-1)).view(b, -1, factor, c).sum(2)
    count = m.view(b, -1, factor).sum(2)
    pooled = summed / count.clamp(min=1).unsqueeze(-1)
    return pooled, count > 0


@dataclass
class CFormerOutput:
    embeds: torch.Tensor  # (B, N_max, llm_dim) speech tokens, zero beyond each row's count
    mask: torch.Tensor  # (B, N_max) bool
    num_tokens: torch.Tensor  # (B,) long
    alpha_sum: torch.Tensor  # (B,) unscaled sum of alphas, for the quantity loss
    cif_tokens: torch.Tensor  # (B, N_max, d-1) raw CIF integrals (before the post-CIF layers)


class CFormer(nn.Module):
    """The BLSP-KD adapter: pre-CIF layers -> alpha from the last channel -> CIF -> Linear(d-1, d) -> post-CIF layers
    -> Linear(d, llm_dim).

    Layers have the Whisper encoder layer shape (pre-LN self-attention + GELU MLP) and use a key padding mask (the
    reference code forgot it). alpha_t = sigmoid(LayerNorm(h)_t[-1]) with no dropout on that path (dropout there made
    the alphas unlearnable in our experiments); the other d-1 channels are integrated.
    """

    def __init__(
        self,
        input_dim: int,
        llm_dim: int,
        d_model: int | None = None,
        num_heads: int = 8,
        ffn_dim: int | None = None,
        num_pre_cif_layers: int = 4,
        num_post_cif_layers: int = 4,
        pre_cif_dropout: float = 0.0,
        post_cif_dropout: float = 0.1,
        frame_pooling: int = 1,
        threshold: float = 1.0,
    ):
        super().__init__()
        d_model = d_model or input_dim
        ffn_dim = ffn_dim or 4 * d_model
        self.frame_pooling = frame_pooling
        self.threshold = threshold
        self.input_proj = nn.Linear(input_dim, d_model) if input_dim != d_model else nn.Identity()
        self.pre_cif = WhisperLayerStack(d_model, num_heads, ffn_dim, num_pre_cif_layers, pre_cif_dropout)
        self.alpha_norm = nn.LayerNorm(d_model)
        self.token_proj = nn.Linear(d_model - 1, d_model)
        self.post_cif = WhisperLayerStack(d_model, num_heads, ffn_dim, num_post_cif_layers, post_cif_dropout)
        self.post_norm = nn.LayerNorm(d_model)
        self.out_proj = nn.Linear(d_model, llm_dim)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor,
                num_tokens: torch.Tensor | None = None) -> CFormerOutput:
        """``frames`` (B, T, input_dim) encoder output, ``frame_mask`` (B, T) bool; ``num_tokens`` (B,) in training
        (the transcript's LLM token count) or None at inference (predicted from the alphas)."""
        frames, frame_mask = pool_frames(frames, frame_mask, self.frame_pooling)
        h = self.pre_cif(self.input_proj(frames), frame_mask)
        h = self.alpha_norm(h)
        alphas = torch.sigmoid(h[..., -1].float()) * frame_mask
        tokens, token_mask, num_tokens = integrate_and_fire(h[..., :-1].float(), alphas, num_tokens, self.threshold)
        x = self.token_proj(tokens.to(h.dtype))
        x = self.post_norm(self.post_cif(x, token_mask))
        embeds = self.out_proj(x) * token_mask.unsqueeze(-1)
        return CFormerOutput(embeds, token_mask, num_tokens, alphas.sum(1), tokens)
