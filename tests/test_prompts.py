import pytest

from grace_trl.prompts import DEFAULT_SYSTEM_PROMPT, PromptEncoder, build_messages, encode_prompt


def test_default_prompt_is_the_grace_system_message(smollm2_path):
    msgs = build_messages("A dog runs .")
    assert msgs[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert msgs[1] == {"role": "user", "content": "A dog runs ."}
    assert build_messages("x", None) == [{"role": "user", "content": "x"}]
    assert build_messages("x", None, "Find the topic.")[0]["content"] == "Find the topic.\nx"


def test_content_start_points_at_the_user_text(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    enc = PromptEncoder(tok)("A dog runs in the park .")
    assert tok.decode(enc.input_ids[enc.content_start:]).startswith("A dog runs in the park .")
    assert DEFAULT_SYSTEM_PROMPT not in tok.decode(enc.input_ids[enc.content_start:])
    # identical to the token ids TRL generates from (chat template with add_generation_prompt)
    ref = tok.apply_chat_template(build_messages("A dog runs in the park ."), add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    assert enc.input_ids == list(ref)
    assert encode_prompt(tok, build_messages("A dog runs in the park .")) == enc


# A Llama-3 style template: the content is trimmed before rendering.
TRIM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def smol_tok(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


@pytest.mark.parametrize("text", ["a", "ass", "assistant", "system", "user", "im_start"])
def test_short_text_found_in_the_template_is_located_at_the_user_turn(smol_tok, text):
    enc = PromptEncoder(smol_tok)(text)
    content = smol_tok.decode(enc.input_ids[enc.content_start:])
    # the pooled span starts at the user's text, not inside the "<|im_start|>assistant" suffix
    assert content == f"{text}<|im_end|>\n<|im_start|>assistant\n"


def test_template_that_trims_content_is_located(smol_tok):
    import copy

    tok = copy.deepcopy(smol_tok)
    tok.chat_template = TRIM_TEMPLATE
    enc = PromptEncoder(tok, system_prompt="Explain.")("  A dog runs.\n")
    assert tok.decode(enc.input_ids[enc.content_start:]).startswith("A dog runs.<|eot_id|>")
    assert "Explain." not in tok.decode(enc.input_ids[enc.content_start:])


def test_template_without_the_content_is_refused(smol_tok):
    import copy

    tok = copy.deepcopy(smol_tok)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}:{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(ValueError, match="exactly once"):
        PromptEncoder(tok)("A dog runs.")
