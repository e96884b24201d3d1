"""Does the model still write? Perplexity on held-out text and 60 fixed questions scored automatically.

Contrastive fine-tuning of a decoder tends to destroy its language modelling (the GRACE paper shows CL
collapsing); GRACE trains through generation and should keep it. Neither perplexity nor a net score is
enough to see damage: a model can lose a dozen answers its base got right and gain a dozen others. So
the check reports **regressions** against a reference run (questions the base model answers right and
the trained model gets wrong) beside the score and the perplexity, and :func:`generation_kept` applies
the project's acceptance rule to them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

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

# (question, accepted answers): an answer counts as right when it contains one of them as a whole word
# (case-insensitive). Short factual questions whose answer is one word, so scoring needs no judge.
QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of the United Kingdom?", ("London",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of China?", ("Beijing",)),
    ("What is the capital of Canada?", ("Ottawa",)),
    ("What is the capital of Australia?", ("Canberra",)),
    ("What is the capital of Greece?", ("Athens",)),
    ("How many days are there in a week?", ("seven", "7")),
    ("How many months are there in a year?", ("twelve", "12")),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    ("How many minutes are there in an hour?", ("60", "sixty")),
    ("How many legs does a spider have?", ("eight", "8")),
    ("How many legs does a dog have?", ("four", "4")),
    ("How many sides does a triangle have?", ("three", "3")),
    ("How many continents are there on Earth?", ("seven", "7")),
    ("What is 2 plus 2?", ("4", "four")),
    ("What is 10 minus 3?", ("7", "seven")),
    ("What is 5 times 3?", ("15", "fifteen")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What color is grass?", ("green",)),
    ("What color are ripe bananas?", ("yellow",)),
    ("What color is snow?", ("white",)),
    ("What do bees make?", ("honey",)),
    ("What do cows drink?", ("water",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("What planet do we live on?", ("Earth",)),
    ("What star is at the center of our solar system?", ("Sun",)),
    ("What is the chemical symbol for water?", ("H2O",)),
    ("What gas do plants absorb from the air?", ("carbon dioxide", "CO2")),
    ("What gas do humans need to breathe?", ("oxygen",)),
    ("At what temperature in Celsius does water freeze?", ("0", "zero")),
    ("At what temperature in Celsius does water boil?", ("100",)),
    ("What is frozen water called?", ("ice",)),
    ("Which organ pumps blood through the body?", ("heart",)),
    ("What do we use to see?", ("eyes", "eye")),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the opposite of up?", ("down",)),
    ("What is the opposite of day?", ("night",)),
    ("What is the opposite of big?", ("small", "little")),
    ("What day comes after Monday?", ("Tuesday",)),
    ("What month comes after January?", ("February",)),
    ("Which season comes after winter?", ("spring",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("Who painted the Mona Lisa?", ("Leonardo", "Vinci")),
    ("Who was the first president of the United States?", ("Washington",)),
    ("What language is mainly spoken in Brazil?", ("Portuguese",)),
    ("What language is mainly spoken in Mexico?", ("Spanish",)),
    ("What is the tallest mountain in the world?", ("Everest",)),
    ("What is the longest river in Africa?", ("Nile",)),
    ("What is the main ingredient of bread?", ("flour", "wheat")),
    ("What do you call a baby cat?", ("kitten",)),
    ("What do you call a baby dog?", ("puppy",)),
]

# Part of the cache key of reference results (reference_generation_check): raise it when the check itself changes
# (how answers are decoded or scored) so that results of the old check are not compared with the new one's.
CHECK_VERSION = 2  # 2: answers end at every EOS id of the model's generation_config
MAX_NEW_TOKENS = 48  # answer length; the questions want one word

# The acceptance rule used to choose recipes (README "Measured on the CPU default").
MAX_REGRESSION_RATE = 0.05  # at most 5% of the questions the reference answers right may be lost
MAX_PERPLEXITY_INCREASE = 0.02  # perplexity at most 2% above the reference's


def is_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    """Whether ``answer`` contains one of ``accepted`` as a whole word (case-insensitive)."""
    # not inside a longer word or number: "0" must not match "-18.0", "7" must not match "1.7" or "17"
    return any(re.search(rf"(?<![\w.\-]){re.escape(a)}(?!\w|\.\d)", answer, flags=re.IGNORECASE)
               for a in accepted)


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


def answer_token_ids(model, tokenizer) -> tuple[list[int], int]:
    """The ids that end a chat answer and the pad id, as the model's ``generation_config`` sets them.

    A chat model may end a turn with any of several tokens (Llama 3: ``<|eot_id|>`` and ``<|end_of_text|>``), so
    ``eos_token_id`` may be a list; the tokenizer's EOS and pad ids are used only where the config has none.
    """
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    eos_ids = [int(eos)] if isinstance(eos, int) else [int(e) for e in (eos or [])]
    if not eos_ids and tokenizer.eos_token_id is not None:
        eos_ids = [int(tokenizer.eos_token_id)]
    if not eos_ids:
        raise ValueError("neither the model's generation_config nor the tokenizer defines an EOS token")
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.pad_token_id
    return list(dict.fromkeys(eos_ids)), int(eos_ids[0] if pad is None else pad)


@torch.no_grad()
def greedy_answers(model, tokenizer, questions: list[str], max_new_tokens: int = MAX_NEW_TOKENS,
                   batch_size: int = 64) -> list[str]:
    """Greedy chat answers (default chat template, no system prompt), left-padded batches in a fixed order.

    Padding shifts fp32 logits very slightly, so an answer can depend on its batch; the batches are the
    same for every model (the question list in order), which keeps base and trained models comparable.
    """
    from ..generation import generate_left_padded

    device = next(model.parameters()).device
    eos, pad = answer_token_ids(model, tokenizer)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"] for q in questions]
    was_training = model.training
    model.eval()
    answers = []
    try:
        for b in range(0, len(prompts), batch_size):
            out = generate_left_padded(model, prompts[b:b + batch_size], pad, eos, device=device,
                                       max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                       eos_token_id=eos)
            answers += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in out]
    finally:
        if was_training:
            model.train()
    return answers


def generation_check(model, tokenizer, text_file: str | None = None, max_new_tokens: int = MAX_NEW_TOKENS,
                     questions: list[tuple[str, tuple[str, ...]]] | None = None,
                     reference: dict | None = None) -> dict:
    """Perplexity, greedy answers scored against known answers, and (given a ``reference`` result of the
    base model) the regressions: questions the reference gets right and this model gets wrong."""
    questions = QUESTIONS if questions is None else questions
    texts = HELD_OUT_TEXT
    if text_file:
        texts = [t for t in Path(text_file).read_text(encoding="utf-8").split("\n\n") if t.strip()]
        if not texts:
            raise ValueError(f"{text_file}: no paragraphs (separate them by blank lines)")
    answers = greedy_answers(model, tokenizer, [q for q, _ in questions], max_new_tokens)
    rows = [{"question": q, "expected": list(acc), "answer": a, "correct": is_correct(a, acc)}
            for (q, acc), a in zip(questions, answers)]
    result = {
        "perplexity": perplexity(model, tokenizer, texts),
        "n_texts": len(texts),
        "n_questions": len(rows),
        "n_correct": sum(r["correct"] for r in rows),
        "max_new_tokens": max_new_tokens,
        "answers": rows,
    }
    if reference is not None:
        result.update(compare_to_reference(result, reference))
    return result


def reference_key(model, tokenizer) -> str:
    """What a reference result depends on: the weights' content (not their path), the check and its questions."""
    from ..cache import make_key, model_fingerprint

    eos, pad = answer_token_ids(model, tokenizer)
    return make_key(kind="generation_check", version=CHECK_VERSION, model=model_fingerprint(model, tokenizer),
                    questions=QUESTIONS, texts=HELD_OUT_TEXT, max_new_tokens=MAX_NEW_TOKENS, eos=eos, pad=pad)[:32]


def reference_generation_check(model, tokenizer, cache_dir: str | Path | None = None, refresh: bool = False) -> dict:
    """The generation check of a reference (starting) model, computed once per weights and kept on disk.

    The trainer's starting model and the benchmarks' base model both come from here, so a base checked by one is
    read back by the other. The cache file is named by :func:`reference_key` (a moved or renamed checkpoint keeps
    its entry; changed weights or a changed check do not) under ``cache_dir`` (default
    ``<GRACE_TRL_CACHE or ~/.cache/grace_trl>/generation_check``). ``refresh`` recomputes and rewrites it.
    """
    from ..files import atomic_write

    if cache_dir is None:
        from ..aliases import cache_dir as grace_cache_dir

        cache_dir = grace_cache_dir() / "generation_check"
    path = Path(cache_dir) / f"{reference_key(model, tokenizer)}.json"
    if path.exists() and not refresh:
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("generation check cache %s is unreadable (%s); computing it again", path, exc)
            cached = None
        if isinstance(cached, dict) and [a.get("question") for a in cached.get("answers", [])] == \
                [q for q, _ in QUESTIONS]:
            logger.info("generation check of the reference model: read from %s", path)
            return cached
    logger.info("generation check of the reference model (%d questions + perplexity, ~1 min on 2 CPU cores)",
                len(QUESTIONS))
    result = generation_check(model, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.write(json.dumps(result, ensure_ascii=False, indent=1))
    return result


def compare_to_reference(result: dict, reference: dict) -> dict:
    """Regressions, gains and the perplexity change of ``result`` against ``reference`` (same questions)."""
    ref = {r["question"]: r for r in reference["answers"]}
    missing = [r["question"] for r in result["answers"] if r["question"] not in ref]
    if missing:
        raise ValueError(f"reference has no answer to {missing[0]!r}: run both checks on the same questions")
    regressions = [r["question"] for r in result["answers"] if ref[r["question"]]["correct"] and not r["correct"]]
    gains = [r["question"] for r in result["answers"] if r["correct"] and not ref[r["question"]]["correct"]]
    ref_correct = sum(ref[r["question"]]["correct"] for r in result["answers"])
    return {
        "reference_correct": ref_correct,
        "regressions": regressions,
        "gains": gains,
        "regression_rate": len(regressions) / ref_correct if ref_correct else 0.0,
        "perplexity_change": result["perplexity"] / reference["perplexity"] - 1.0,
    }


def generation_kept(result: dict, max_regression_rate: float = MAX_REGRESSION_RATE,
                    max_perplexity_increase: float = MAX_PERPLEXITY_INCREASE) -> bool:
    """The project's rule: few of the reference's right answers lost, and perplexity close to the reference's."""
    if "regression_rate" not in result:
        raise ValueError("generation_kept needs a result computed with reference=<the base model's result>")
    return result["regression_rate"] <= max_regression_rate and result["perplexity_change"] <= max_perplexity_increase


def summary_line(label: str, result: dict) -> str:
    """One line for logs and tables: score, regressions against the reference, perplexity."""
    line = (f"{label}: {result['n_correct']}/{result['n_questions']} answers right, "
            f"perplexity {result['perplexity']:.2f}")
    if "regressions" in result:
        line += (f"; {len(result['regressions'])} of the reference's {result['reference_correct']} right answers lost "
                 f"({100 * result['regression_rate']:.1f}%), {len(result['gains'])} gained, perplexity "
                 f"{100 * result['perplexity_change']:+.1f}%")
    return line
