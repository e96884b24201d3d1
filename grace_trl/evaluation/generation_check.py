"""Does the model still write? Perplexity on held-out plain text + greedy answers to fixed questions.

Contrastive fine-tuning of a decoder tends to destroy its language modelling (the GRACE paper
shows CL collapsing); GRACE trains through generation and should keep it. Comparing these
numbers before and after training makes that visible.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

# Short original paragraphs of ordinary prose, used only to measure perplexity.
HELD_OUT_TEXT = [
    "The library opens at nine in the morning and closes at six in the evening. On weekends it keeps "
    "shorter hours, and the reading room on the second floor is reserved for quiet study.",
    "Rain had fallen for most of the night, so the path through the park was covered in puddles. "
    "A few people walked their dogs anyway, stepping carefully around the deepest water.",
    "To make a simple tomato sauce, warm some olive oil in a pan, add chopped garlic, and cook it "
    "gently for a minute before pouring in the tomatoes. Let it simmer until it thickens.",
    "The museum's new exhibition explores how maps have changed over five centuries, from hand-drawn "
    "charts used by sailors to the satellite images that guide modern navigation systems.",
    "Regular exercise improves sleep, mood and concentration. Even a short walk after lunch can make "
    "the afternoon feel less tiring, especially for people who sit at a desk all day.",
    "The train was delayed by twenty minutes because of a signal problem near the station. Most "
    "passengers waited patiently on the platform, checking the departure board every few minutes.",
    "Bees visit thousands of flowers each day to collect nectar and pollen. In doing so they carry "
    "pollen from plant to plant, which helps many fruits and vegetables to grow.",
    "When the team finished the project, they wrote a short report describing what had worked, what "
    "had failed, and what they would change if they had to start again.",
]

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many days are there in a week?",
    "Explain in one sentence why the sky looks blue.",
    "Write a short greeting for a friend's birthday.",
]


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str] = HELD_OUT_TEXT) -> float:
    """Token-weighted perplexity of ``texts`` (each scored on its own, no chat template)."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids.to(device)
            if ids.shape[1] < 2:
                continue
            out = model(input_ids=ids, labels=ids)
            n = ids.shape[1] - 1
            total_nll += float(out.loss) * n
            total_tokens += n
    finally:
        if was_training:
            model.train()
    if total_tokens == 0:
        raise ValueError("held-out texts produced no tokens to score")
    return math.exp(total_nll / total_tokens)


@torch.no_grad()
def greedy_answers(model, tokenizer, questions: list[str] = QUESTIONS, max_new_tokens: int = 48) -> list[str]:
    """Greedy chat answers (default chat template, no system prompt)."""
    device = next(model.parameters()).device
    answers = []
    for q in questions:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        ids = prompt["input_ids"].to(device)
        out = model.generate(input_ids=ids, attention_mask=prompt["attention_mask"].to(device),
                             max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return answers


def generation_check(model, tokenizer, text_file: str | None = None, max_new_tokens: int = 48) -> dict:
    texts = HELD_OUT_TEXT
    if text_file:
        texts = [t for t in Path(text_file).read_text(encoding="utf-8").split("\n\n") if t.strip()]
        if not texts:
            raise ValueError(f"{text_file}: no paragraphs (separate them by blank lines)")
    return {
        "perplexity": perplexity(model, tokenizer, texts),
        "n_texts": len(texts),
        "answers": [{"question": q, "answer": a}
                    for q, a in zip(QUESTIONS, greedy_answers(model, tokenizer, QUESTIONS, max_new_tokens))],
    }
