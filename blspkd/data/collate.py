"""Batch collation for BlspKdModel.forward: features plus one token layout shared by the teacher and the student.

Because the CIF emits exactly as many speech tokens as the transcript has LLM tokens, the student sequence has the same
length and layout as the teacher's: ``[prefix | transcript | suffix | response + end of turn]``, right-padded (no end
of turn after a truncated teacher response). The model
replaces the embeddings at ``transcript_mask`` positions by speech tokens for the student pass.
"""
from __future__ import annotations

import numpy as np
import torch

from blspkd.data.prompts import ChatFraming


class BlspKdCollator:
    """``BlspKdCollator(tokenizer, config)(items) -> dict`` with exactly the keys ``BlspKdModel.forward`` takes:

    feats (B, T, n_mels) float32 zero-padded, feats_lengths (B,), input_ids (B, L), attention_mask (B, L),
    transcript_mask (B, L) bool, response_mask (B, L) bool (response tokens incl. end of turn), num_tokens (B,).

    An item is ``{"key", "feats" (T, n_mels) float32, "text", optional "instruction", optional "response", optional
    "response_truncated"}``; an item without an instruction gets ``config.default_instruction``. A truncated response
    (the teacher stopped at max_new_tokens) gets no end of turn: the model must not learn to stop where the teacher was
    cut off. Items holding cached encoder outputs ``"encoder_out"`` (T', d) instead of ``"feats"`` give
    ``encoder_out``/``encoder_out_lengths`` instead of ``feats``/``feats_lengths``. Items of a raw dump dir carry
    ``"speech"`` (L,) float32 samples instead: the batch then has speech (B, L) zero-padded and speech_lengths (B,),
    for ``blspkd.data.mel.speech_to_feats`` on the model's device.
    """

    def __init__(self, tokenizer, config):
        self.framing = ChatFraming(tokenizer, config.system_prompt, config.instruction_separator)
        self.default_instruction = config.default_instruction
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = 0 if pad is None else pad

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("BlspKdCollator: empty batch")
        seqs, spans = [], []
        for item in items:
            transcript = self.framing.transcript_ids(item["text"])
            if not transcript:
                raise ValueError(f"utterance {item['key']}: empty transcript (no LLM tokens); remove it from the "
                                 "data dir (utils/fix_data_dir.sh drops empty transcripts)")
            instruction = item.get("instruction") or self.default_instruction
            prefix = self.framing.prefix_ids(instruction)
            response = (self.framing.response_ids(item["response"], finished=not item.get("response_truncated"))
                        if item.get("response") else [])
            head = len(prefix)
            tail = head + len(transcript) + len(self.framing.suffix_ids)
            seqs.append(prefix + transcript + self.framing.suffix_ids + response)
            spans.append((head, head + len(transcript), tail, tail + len(response)))

        b, length = len(items), max(len(s) for s in seqs)
        input_ids = torch.full((b, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(b, length, dtype=torch.long)
        transcript_mask = torch.zeros(b, length, dtype=torch.bool)
        response_mask = torch.zeros(b, length, dtype=torch.bool)
        for i, (seq, (t0, t1, r0, r1)) in enumerate(zip(seqs, spans)):
            input_ids[i, : len(seq)] = torch.tensor(seq)
            attention_mask[i, : len(seq)] = 1
            transcript_mask[i, t0:t1] = True
            response_mask[i, r0:r1] = True

        if "speech" in items[0]:
            signal = self._pad_speech(items)
        else:
            signal = self._pad_feats(items, "encoder_out" if "encoder_out" in items[0] else "feats")
        return {
            **signal,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "transcript_mask": transcript_mask,
            "response_mask": response_mask,
            "num_tokens": transcript_mask.sum(1),
        }

    @staticmethod
    def _pad_feats(items: list[dict], name: str) -> dict[str, torch.Tensor]:
        feats = [np.asarray(item[name], dtype=np.float32) for item in items]
        n_mels = {f.shape[1] if f.ndim == 2 else -1 for f in feats}
        if len(n_mels) != 1 or -1 in n_mels:
            shapes = {item["key"]: f.shape for item, f in zip(items, feats)}
            raise ValueError(f"BlspKdCollator: {name} must all be (T, dim) with one dim, got {shapes}")
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        padded = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1])
        for i, f in enumerate(feats):
            padded[i, : f.shape[0]] = torch.from_numpy(f)
        return {name: padded, f"{name}_lengths": lengths}

    @staticmethod
    def _pad_speech(items: list[dict]) -> dict[str, torch.Tensor]:
        speech = [np.asarray(item["speech"], dtype=np.float32) for item in items]
        if any(x.ndim != 1 for x in speech):
            shapes = {item["key"]: x.shape for item, x in zip(items, speech)}
            raise ValueError(f"BlspKdCollator: speech must all be 1-D waveforms, got {shapes}")
        lengths = [len(x) for x in speech]
        padded = np.zeros((len(speech), max(lengths)), dtype=np.float32)  # numpy row copies: 4x torch's on a CPU
        for i, x in enumerate(speech):
            padded[i, : len(x)] = x
        return {"speech": torch.from_numpy(padded), "speech_lengths": torch.tensor(lengths, dtype=torch.long)}
