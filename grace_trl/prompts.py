"""Prompts: how a raw text becomes the chat the policy reads.

Queries and documents share one prompt (as in GRACE). The token index where the user content
starts is returned with the ids, because pooling starts there: the system prompt is the same for
every text and would pull all embeddings towards one point.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SYSTEM_PROMPT = (
    "Read and analyze the following text, then you need to provide your reasoning within <think></think> "
    "tags. Finally, generate a comprehensive understanding of this text."
)


def build_messages(text: str, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, instruction: str | None = None):
    """Chat messages for one text. ``instruction`` (e.g. a task description) is prepended to the text."""
    content = f"{instruction}\n{text}" if instruction else text
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": content})
    return messages


@dataclass(frozen=True)
class EncodedPrompt:
    input_ids: list[int]
    content_start: int  # index of the first token of the user content (pooling starts here)


def encode_prompt(tokenizer, messages, chat_template_kwargs: dict | None = None) -> EncodedPrompt:
    """Tokenize a chat with ``add_generation_prompt=True`` and locate the start of the user content."""
    kwargs = dict(chat_template_kwargs or {})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    content = messages[-1]["content"]
    char_start = rendered.rfind(content) if content else -1
    if char_start < 0:
        raise ValueError("the chat template does not contain the user content verbatim; cannot locate it for pooling")
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    start = next((i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > char_start), len(ids))
    return EncodedPrompt(ids, start)


class PromptEncoder:
    """Caches :func:`encode_prompt` per text: a group's G rollouts share one prompt."""

    def __init__(self, tokenizer, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT, instruction: str | None = None,
                 chat_template_kwargs: dict | None = None, max_cache: int = 100_000):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.instruction = instruction
        self.chat_template_kwargs = chat_template_kwargs
        self._cache: dict = {}
        self._max_cache = max_cache

    def messages(self, text: str):
        return build_messages(text, self.system_prompt, self.instruction)

    def encode_messages(self, messages) -> EncodedPrompt:
        key = tuple((m["role"], m["content"]) for m in messages)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            hit = self._cache[key] = encode_prompt(self.tokenizer, messages, self.chat_template_kwargs)
        return hit

    def __call__(self, text: str) -> EncodedPrompt:
        return self.encode_messages(self.messages(text))
