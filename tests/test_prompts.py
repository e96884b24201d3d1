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
