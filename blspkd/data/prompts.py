"""Chat framing of BLSP-KD sequences from the tokenizer's own chat template (doc/method.md §4).

    teacher: [prefix | instruction? | transcript tokens | suffix (+ response + end of turn)]
    student: [prefix | instruction? | N speech tokens   | suffix (+ response + end of turn)]

The template is rendered once with a sentinel in place of the user text; what comes before the sentinel is the prefix
(system prompt, user header, instruction), what comes after is the suffix (end of user turn, assistant header). The
transcript is tokenized on its own without special tokens, so N does not depend on BPE merges across the boundary. Works
for any template (ChatML, Llama 3, ...): nothing about a particular format is written here.

Templates that write today's date into the system prompt (Llama 3.x: "Today Date: ...") are rendered with their
``date_string`` variable pinned to ``CHAT_DATE``, so the prefix is the same token sequence in stage 3, in training and
in decoding, whatever day each runs on; a template that reads the clock in a way this cannot pin is refused.
"""
from __future__ import annotations

import datetime

_SENTINEL = "\ue000BLSPKD_SPEECH\ue000"
# Llama 3.x's own fallback date; any fixed date works, as long as every stage uses the same one.
CHAT_DATE = datetime.date(2024, 7, 26)
_DATE_KWARGS = {"date_string": CHAT_DATE.strftime("%d %b %Y")}  # what Llama 3.x templates print when it is set


class ChatFraming:
    """Token ids of the fixed parts of a BLSP-KD sequence for one tokenizer.

    ``system_prompt``: None keeps the template's default (some templates insert one); a string adds a system turn.
    ``separator``: text between an instruction and the transcript/speech.
    """

    def __init__(self, tokenizer, system_prompt: str | None = None, separator: str = "\n"):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; BLSP-KD "
                             "builds its sequences from the chat template of an instruction-tuned LLM (use a chat "
                             "model, or set tokenizer.chat_template and save the tokenizer)")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.separator = separator
        prefix, suffix = self._render_split(None, add_generation_prompt=True)
        self.suffix_ids: list[int] = self._encode(suffix)
        self.end_of_turn_ids: list[int] = self._assistant_end()
        self._prefix_cache: dict[str | None, list[int]] = {}

    def _messages(self, user: str) -> list[dict]:
        system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return [*system, {"role": "user", "content": user}]

    def _render_split(self, instruction: str | None, add_generation_prompt: bool) -> tuple[str, str]:
        user = _SENTINEL if not instruction else instruction.rstrip() + self.separator + _SENTINEL
        text = self._render(self._messages(user), add_generation_prompt=add_generation_prompt)
        if text.count(_SENTINEL) != 1:
            raise ValueError("the chat template does not reproduce the user message verbatim; cannot place speech")
        before, after = text.split(_SENTINEL)
        return before, after

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **_DATE_KWARGS)
        if "strftime_now" in self.tokenizer.chat_template and _DATE_KWARGS["date_string"] not in text:
            raise ValueError(
                f"the chat template of {getattr(self.tokenizer, 'name_or_path', '')!r} calls strftime_now() and "
                "ignores date_string: its prompt would change with the day, so stage 3, training and decoding would "
                "frame differently. Edit the template to print date_string (as Llama 3.x templates do) and save the "
                "tokenizer")
        return text

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def prefix_ids(self, instruction: str | None = None) -> list[int]:
        """Template start up to the user text: system prompt, user header, and the instruction if any."""
        if instruction not in self._prefix_cache:
            self._prefix_cache[instruction] = self._encode(self._render_split(instruction, True)[0])
        return self._prefix_cache[instruction]

    def _assistant_end(self) -> list[int]:
        """What the template writes after an assistant message (its end-of-turn marker), else the EOS token."""
        messages = self._messages("x") + [{"role": "assistant", "content": _SENTINEL}]
        text = self._render(messages)
        end = text.split(_SENTINEL, 1)[1].rstrip() if _SENTINEL in text else ""
        if end:
            return self._encode(end)
        if self.tokenizer.eos_token_id is None:
            raise ValueError("cannot tell how an assistant turn ends: the chat template writes nothing after it and "
                             "the tokenizer has no eos_token")
        return [self.tokenizer.eos_token_id]

    def transcript_ids(self, text: str) -> list[int]:
        """The transcript's tokens on their own (no special tokens); their count is the CIF target N."""
        return self._encode(text.strip())

    def response_ids(self, response: str, finished: bool = True) -> list[int]:
        """A response followed by the end-of-turn marker, so the model also learns to stop; ``finished=False`` (a
        response cut at a token limit) leaves the marker off, as the authors' code does."""
        return self._encode(response.strip()) + (self.end_of_turn_ids if finished else [])
