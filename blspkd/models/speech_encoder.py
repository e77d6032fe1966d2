"""Whisper encoder on the true input length (doc/method.md §2), and the Whisper-shaped layer stack the adapter reuses.

transformers' ``WhisperEncoder.forward`` insists on 3000 mel frames (30 s). ``WhisperSpeechEncoder`` runs the same
modules on the real length instead: conv1 -> GELU -> conv2 (stride 2) -> GELU -> + embed_positions[:T'] -> layers ->
LayerNorm, with T' = ceil(T / 2). Inside a batch, a shorter utterance's padded frames are zeroed between the
convolutions (so the convolution sees the same zero padding it sees when run alone) and masked as attention keys, so
an utterance's encoding does not depend on its batch-mates. ``pad_to_30s=True`` restores the reference behaviour
(every input padded to 3000 frames with the value zero-padded audio would have had, the full 1500 positions attended,
the output cut to T').
"""
from __future__ import annotations

import torch
from torch import nn


def key_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) bool validity mask -> (B, 1, 1, T) additive attention bias (0 where valid, dtype-min where padded)."""
    return (~mask).to(dtype).mul(torch.finfo(dtype).min).view(mask.shape[0], 1, 1, mask.shape[1])


class WhisperLayerStack(nn.Module):
    """``num_layers`` transformers ``WhisperEncoderLayer``s (pre-LN attention + GELU MLP) with a key padding mask."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

        config = WhisperConfig(d_model=d_model, encoder_attention_heads=num_heads, encoder_ffn_dim=ffn_dim,
                               dropout=dropout, attention_dropout=dropout, activation_dropout=dropout)
        config._attn_implementation = "sdpa"
        self.layers = nn.ModuleList([WhisperEncoderLayer(config) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = key_padding_bias(mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return x * mask.unsqueeze(-1)


def whisper_pad_value(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance log-mel value of zero-padded audio: Whisper clamps log10 power at (max - 8) and at log10(1e-10) =
    -10, then maps x -> (x + 4) / 4, so silence becomes max(feat_max - 2, -1.5). Returns (B,)."""
    t = torch.arange(feats.shape[1], device=feats.device)
    valid = (t.view(1, -1) < lengths.view(-1, 1)).unsqueeze(-1)
    fmax = feats.masked_fill(~valid, float("-inf")).amax(dim=(1, 2))
    return torch.clamp(fmax - 2.0, min=-1.5)


class WhisperSpeechEncoder(nn.Module):
    """The encoder of a transformers Whisper model, run on variable-length log-mel input.

    ``forward(feats (B, T, n_mels), lengths (B,)) -> (hidden (B, T', d_model), mask (B, T') bool)``.
    Frozen (and run without autograd) unless ``freeze=False``.
    """

    def __init__(self, whisper_dir: str, freeze: bool = True, pad_to_30s: bool = False):
        super().__init__()
        from transformers import WhisperConfig, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_pretrained(whisper_dir)
        config._attn_implementation = "sdpa"
        # Load only the encoder's weights; the decoder is not needed.
        full = WhisperModel.from_pretrained(whisper_dir, config=config)
        self.encoder: WhisperEncoder = full.get_encoder()
        del full
        self.pad_to_30s = pad_to_30s
        self.frozen = freeze
        self.encoder.requires_grad_(not freeze)
        self.encoder.embed_positions.requires_grad_(False)

    @property
    def output_dim(self) -> int:
        return self.encoder.config.d_model

    @property
    def max_frames(self) -> int:
        enc = self.encoder
        return enc.config.max_source_positions * enc.conv1.stride[0] * enc.conv2.stride[0]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen encoder stays deterministic (no dropout) while the adapter trains
            self.encoder.eval()
        return self

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.shape[1] > self.max_frames:
            raise ValueError(f"Whisper encoder: input has {feats.shape[1]} frames, more than the {self.max_frames} "
                             "(30 s) its positional embeddings cover; filter long utterances in feature extraction "
                             "(--max_duration 30)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._encode(feats, lengths)

    def _encode(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        b, t, _ = feats.shape
        lengths = lengths.to(feats.device)
        out_lengths = (lengths + 1) // 2
        dtype = enc.conv1.weight.dtype
        if self.pad_to_30s:
            frame = torch.arange(self.max_frames, device=feats.device).view(1, -1)
            padded = whisper_pad_value(feats, lengths).view(b, 1, 1).expand(b, self.max_frames, feats.shape[2])
            x = torch.nn.functional.pad(feats, (0, 0, 0, self.max_frames - t))
            x = torch.where((frame < lengths.view(-1, 1)).unsqueeze(-1), x, padded)
            hidden = enc(x.transpose(1, 2).to(dtype)).last_hidden_state
            t_out = int(out_lengths.max())
            mask = torch.arange(t_out, device=feats.device).view(1, -1) < out_lengths.view(-1, 1)
            return hidden[:, :t_out] * mask.unsqueeze(-1), mask

        in_mask = torch.arange(t, device=feats.device).view(1, -1) < lengths.view(-1, 1)
        x = (feats * in_mask.unsqueeze(-1)).transpose(1, 2).to(dtype)
        x = nn.functional.gelu(enc.conv1(x)) * in_mask.unsqueeze(1)
        x = nn.functional.gelu(enc.conv2(x)).transpose(1, 2)
        t_out = x.shape[1]
        mask = torch.arange(t_out, device=feats.device).view(1, -1) < out_lengths.view(-1, 1)
        x = x + enc.embed_positions.weight[:t_out]
        x = nn.functional.dropout(x, p=enc.dropout, training=enc.training)
        bias = key_padding_bias(mask, x.dtype)
        for layer in enc.layers:
            x = layer(x, bias)
        x = enc.layer_norm(x)
        return x * mask.unsqueeze(-1), mask
