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


NO_SYSTEM_PROMPT = ("none", "null", "")


def normalize_system_prompt(value: str | None) -> str | None:
    """``None`` for "no system message", however a config or command line spells it ("none", "null", "")."""
    if value is None or value.strip().lower() in NO_SYSTEM_PROMPT:
        return None
    return value


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


# Stands in for the user content when rendering the template around it; no real text contains it.
CONTENT_SENTINEL = "\u2063GRACE_TEXT\u2063"


def render_prompt(tokenizer, messages, chat_template_kwargs: dict | None = None) -> str:
    """The chat as the policy reads it: template applied, generation prompt appended."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         **dict(chat_template_kwargs or {}))


def template_around_content(tokenizer, messages, chat_template_kwargs: dict | None = None) -> tuple[str, str]:
    """What the template renders before and after the last message's content (system turn, headers, suffix).

    Found by rendering a sentinel in place of the content, so a text that also occurs in the template
    (``"a"``, ``"ass"`` inside ``assistant``) cannot be mistaken for the content.
    """
    probe = [*messages[:-1], {**messages[-1], "content": CONTENT_SENTINEL}]
    shell = render_prompt(tokenizer, probe, chat_template_kwargs)
    cut = shell.find(CONTENT_SENTINEL)
    if cut < 0 or shell.find(CONTENT_SENTINEL, cut + 1) >= 0:
        raise ValueError("the chat template does not render the user content exactly once; cannot locate it for "
                         "pooling")
    return shell[:cut], shell[cut + len(CONTENT_SENTINEL):]


def encode_prompt(tokenizer, messages, chat_template_kwargs: dict | None = None,
                  around: tuple[str, str] | None = None) -> EncodedPrompt:
    """Tokenize a chat with ``add_generation_prompt=True`` and locate the start of the user content.

    The content is what lies between the template's own text before and after it, so templates that
    trim or otherwise rewrite the content (Llama-3 style ``| trim``) are handled too. ``around`` is
    :func:`template_around_content` when the caller already has it.
    """
    rendered = render_prompt(tokenizer, messages, chat_template_kwargs)
    head, tail = around or template_around_content(tokenizer, messages, chat_template_kwargs)
    if not (rendered.startswith(head) and rendered.endswith(tail)) or len(rendered) <= len(head) + len(tail):
        raise ValueError("the chat template renders this text as nothing (or changes the text around it); there is "
                         "no user content to pool")
    char_start = len(head)
    enc = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    start = next((i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > char_start), len(ids))
    if start >= len(ids):
        raise ValueError("the user content has no token of its own after tokenization; there is nothing to pool")
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
        self._around: dict = {}  # template text around the content, per conversation before the last message
        self._max_cache = max_cache

    def messages(self, text: str):
        return build_messages(text, self.system_prompt, self.instruction)

    def encode_messages(self, messages) -> EncodedPrompt:
        key = tuple((m["role"], m["content"]) for m in messages)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            around = self._around.get(key[:-1] + (key[-1][0],))
            if around is None:
                around = self._around[key[:-1] + (key[-1][0],)] = template_around_content(
                    self.tokenizer, messages, self.chat_template_kwargs)
            hit = self._cache[key] = encode_prompt(self.tokenizer, messages, self.chat_template_kwargs, around)
        return hit

    def __call__(self, text: str) -> EncodedPrompt:
        return self.encode_messages(self.messages(text))
