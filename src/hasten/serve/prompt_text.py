"""The user's text inside a chat-templated prompt: what a ranker trained on raw prompts reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Stands in for the user's message while the template is rendered; never a real prompt.
_MARK = "\x00hasten-user-text\x00"


class PromptText:
    """Turns prompt token ids back into the text the user sent.

    An engine only sees token ids, and a chat server has wrapped the user's message in the
    model's template (system prompt, role markers). The ranker was trained on the bare
    message, so the template is cut off again: the template is rendered once around a
    marker, and the decoded prompt loses that prefix and suffix when it carries them.
    Prompts that do not (plain completions) are decoded without special tokens. A prompt
    of special tokens only gives ``""``: nothing for a ranker to read.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix, self.suffix = "", ""
        if getattr(tokenizer, "chat_template", None):
            try:
                rendered = tokenizer.apply_chat_template(
                    [{"role": "user", "content": _MARK}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            except Exception:
                # A template that needs more than one user turn: keep the whole text.
                rendered = _MARK
            if isinstance(rendered, str) and rendered.count(_MARK) == 1:
                self.prefix, self.suffix = rendered.split(_MARK)

    def __call__(self, token_ids: Sequence[int]) -> str:
        ids = list(token_ids)
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        if self.prefix and text.startswith(self.prefix) and text.endswith(self.suffix):
            return text[len(self.prefix) : len(text) - len(self.suffix)]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
