"""The model card of a GRACE checkpoint, built with ``huggingface_hub.ModelCard`` (metadata, model-index).

One builder serves the trainer (TRL's ``create_model_card``/``push_to_hub``) and ``grace-trl push``, so a
card says the same wherever it was written: the base model, what GRACE is, how to embed with
``GRACEEncoder`` and sentence-transformers, the saved GRACE settings and, when given, evaluation results.
"""

from __future__ import annotations

import html
import json
import re
import textwrap
from typing import Any, Mapping, Sequence

from .pooling import POOLING_METHODS
from .settings import GRACESettings

PAPER = {
    "title": "GRACE: Generative Representation Learning via Contrastive Policy Optimization",
    "id": "2510.04506",
    # docstyle-ignore
    "citation": textwrap.dedent("""\
        @article{grace2025,
            title   = {{GRACE: Generative Representation Learning via Contrastive Policy Optimization}},
            journal = {arXiv preprint arXiv:2510.04506},
            year    = {2025},
            url     = {https://arxiv.org/abs/2510.04506}
        }"""),
}
TAGS = ["grace", "trl", "sentence-transformers", "feature-extraction", "sentence-similarity", "embeddings"]

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{% if base_model %}This model is a fine-tuned version of [{{ base_model }}](https://huggingface.co/{{ base_model }}){% else %}This model{% endif %}{% if dataset_name %} on the [{{ dataset_name }}](https://huggingface.co/datasets/{{ dataset_name }}) dataset{% endif %}, trained as a text embedder with **GRACE** ([{{ paper_title }}](https://huggingface.co/papers/{{ paper_id }})) using grace_trl on top of [TRL](https://github.com/huggingface/trl).
{% if base_weights_note %}{{ base_weights_note }}
{% endif %}The model writes a short rationale about a text; {{ pooling_text }}, L2-normalised, is the embedding. {% if lora %}The folder holds a LoRA adapter on the base model: `GRACEEncoder` and the sentence-transformers module below merge it into the base weights when they load, and `grace-trl export --checkpoint <this folder> --output <new folder>` writes the merged causal LM that transformers and vLLM load directly.{% else %}The weights are an ordinary causal LM, so the same folder also generates rationales with transformers or vLLM.{% endif %}

## Install

`GRACEEncoder` and the sentence-transformers module below come with grace_trl, which is not published on PyPI: install it from a clone of the grace_trl repository with `pip install -e .` (its README lists the torch build to install first).

## How to embed
{% if local_folder %}
`{{ model_id }}` stands for the path of this folder.
{% endif %}
With rationales (GRACE's embedding):

```python
from grace_trl import GRACEEncoder

encoder = GRACEEncoder.from_pretrained({{ model_id_literal }})
vectors, rationales = encoder.encode(["A man is playing a guitar."], return_rationales=True)
```

{% if sentence_transformers %}Without rationales (faster, usually less accurate), identical to `GRACEEncoder.encode(..., use_rationale=False)`.
The prompt and pooling live in a small sentence-transformers module shipped with `grace-trl`; `load_sentence_transformer` loads it
without `trust_remote_code=True`, accepting only grace-trl's and sentence-transformers' own module classes:

```python
from grace_trl import load_sentence_transformer

model = load_sentence_transformer({{ model_id_literal }})
embeddings = model.encode(["A man is playing a guitar.", "Someone plays an instrument."])
print(model.similarity(embeddings, embeddings))
```

For most sentence-transformers models `prompt=` is a prefix of the text. Here it replaces GRACE's instruction inside the chat template, as `GRACEEncoder.encode(prompt=...)` does. The saved `query` and `document` prompts are empty, so `encode_query` and `encode_document` embed the same way, as in training.
{% endif %}
## GRACE settings (`grace_config.json`)

| setting | value |
|---|---|
{% for key, value in settings %}| {{ key }} | {{ value }} |
{% endfor %}
{% if training %}
## Training

{% if wandb_url %}[Weights & Biases run]({{ wandb_url }}) {% endif %}{% if trackio_url %}[Trackio]({{ trackio_url }}) {% endif %}{% if comet_url %}[Comet]({{ comet_url }}){% endif %}

| parameter | value |
|---|---|
{% for key, value in training %}| {{ key }} | {{ value }} |
{% endfor %}{% endif %}
{% if results %}
## Evaluation

| task | dataset | split | n | metric | value |
|---|---|---|---|---|---|
{% for r in results %}| {{ r.task }} | {{ r.dataset }} | {{ r.split }} | {{ r.n }} | {{ r.metric }} | {{ "%.4f" % r.value }} |
{% endfor %}{% endif %}
### Framework versions

{% for name, version in versions %}- {{ name }}: {{ version }}
{% endfor %}
## Citation

```bibtex
{{ citation }}
```
"""

# What the embedding is, per pooling method (``settings.pooling``)
POOLING_TEXT = {
    "mean": "the mean of its last-layer hidden states over the text and the rationale",
    "rationale": "the mean of its last-layer hidden states over the rationale's tokens",
    "last": "its last-layer hidden state at the final token (the end of the rationale)",
}

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def escape_markdown(value: Any) -> str:
    """One table cell: HTML-escaped (so ``<think>`` shows as text) and Markdown specials backslashed."""
    text = html.escape(str(value), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\r", "").replace("\n", "<br>")


def python_string(value: str) -> str:
    """A Python string literal of ``value`` for the card's code (quotes, backslashes and newlines escaped)."""
    return json.dumps(str(value))


def _versions() -> list[tuple[str, str]]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("grace-trl", "trl", "transformers", "sentence-transformers", "torch", "datasets"):
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            continue
    return out


def mteb_eval_results(results: Mapping[str, Mapping[str, float]]) -> list:
    """``{mteb task: {metric: value}}`` of full official runs as ``EvalResult``s: the task type, dataset, revision
    and split come from mteb's task metadata. A reduced run or another dataset is described by the caller with
    its own ``EvalResult`` (``dataset_args={"n": ..., "reduced": True}``)."""
    import mteb
    from huggingface_hub import EvalResult

    out = []
    for task, metrics in results.items():
        try:
            meta = mteb.get_task(task).metadata
        except KeyError:
            raise ValueError(f"results: {task!r} is not an mteb task name; pass huggingface_hub.EvalResult objects "
                             "for results on other data") from None
        for metric, value in metrics.items():
            out.append(EvalResult(task_type=meta._hf_task_type()[0], task_name=meta.type,
                                  dataset_type=meta.dataset["path"], dataset_name=meta.name,
                                  dataset_split=meta.eval_splits[0], dataset_revision=meta.dataset["revision"],
                                  metric_type=metric, metric_value=float(value)))
    return out


def _results_rows(eval_results: list) -> list[dict]:
    rows = []
    for r in eval_results:
        n = (r.dataset_args or {}).get("n")
        reduced = " (reduced)" if (r.dataset_args or {}).get("reduced") else ""
        rows.append({"task": escape_markdown(r.dataset_name + reduced), "dataset": escape_markdown(r.dataset_type),
                     "split": escape_markdown(r.dataset_split or "?"),
            "n": f"{n:,}" if isinstance(n, int) else "full", "metric": escape_markdown(r.metric_type),
            "value": float(r.metric_value)})
    return rows


def build_model_card(model_id: str, settings: GRACESettings, model_name: str | None = None,
                     base_model: str | None = None,
                     license: str | None = None, dataset_name: str | None = None,
                     results: Mapping[str, Mapping[str, float]] | Sequence[Any] | None = None,
                     training: Mapping[str, Any] | None = None, tags: list[str] | None = None,
                     wandb_url: str | None = None, trackio_url: str | None = None, comet_url: str | None = None,
                     base_weights_note: str | None = None, local_folder: bool = False, lora: bool = False):
    """A :class:`huggingface_hub.ModelCard` with a model-index of ``results``.

    ``results``: ``huggingface_hub.EvalResult`` objects, or ``{mteb task: {metric: value}}`` of full official runs
    (see :func:`mteb_eval_results`). ``model_id`` is what the snippets load: a Hub id, or with ``local_folder``
    a folder name the card says stands for the folder's path (a local card names no path of the machine
    that wrote it). ``lora``: the folder is a LoRA adapter (the card says how to merge it).
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from .st_module import SENTENCE_TRANSFORMERS_POOLING

    if settings.pooling not in POOLING_METHODS:
        raise ValueError(f"settings.pooling must be one of {POOLING_METHODS}, got {settings.pooling!r}")

    name = model_name or model_id.rstrip("/").split("/")[-1]
    if isinstance(results, Mapping):
        eval_results = mteb_eval_results(results)
    else:
        eval_results = list(results or [])
        bad = [r for r in eval_results if not isinstance(r, EvalResult)]
        if bad:
            raise ValueError(f"results must be huggingface_hub.EvalResult objects or a {{task: {{metric: value}}}} "
                             f"mapping, got {type(bad[0]).__name__}")
    all_tags = list(dict.fromkeys([*TAGS, *(["lora", "peft"] if lora else []), *(tags or [])]))
    card_data = ModelCardData(base_model=base_model, datasets=[dataset_name] if dataset_name else None,
                              license=license, library_name="sentence-transformers", model_name=name,
                              pipeline_tag="sentence-similarity", tags=all_tags, eval_results=eval_results or None)
    return ModelCard.from_template(
        card_data, template_str=TEMPLATE, model_name=escape_markdown(name), model_id=model_id,
        model_id_literal=python_string(model_id), base_model=base_model,
        dataset_name=dataset_name, paper_title=PAPER["title"], paper_id=PAPER["id"], citation=PAPER["citation"],
        settings=[(k, escape_markdown(v)) for k, v in vars(settings).items()],
        training=[(escape_markdown(k), escape_markdown(v)) for k, v in (training or {}).items()],
        results=_results_rows(eval_results), base_weights_note=base_weights_note, local_folder=local_folder, lora=lora,
        pooling_text=POOLING_TEXT[settings.pooling],
        sentence_transformers=settings.pooling in SENTENCE_TRANSFORMERS_POOLING,
        versions=_versions(), wandb_url=wandb_url, trackio_url=trackio_url, comet_url=comet_url)
