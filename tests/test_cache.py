"""Rationale cache: hit/miss, corrupt and half-written entries, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from grace_trl.cache import CachedRationale, RationaleCache, make_key, model_fingerprint


def test_key_depends_on_every_part():
    base = dict(model="m", prompt="p", text="t", max_new_tokens=16, temperature=0.0)
    key = make_key(**base)
    assert key == make_key(**dict(reversed(list(base.items()))))  # order-independent
    changes = [("model", "m2"), ("prompt", "p2"), ("text", "t2"), ("max_new_tokens", 17), ("temperature", 0.5)]
    for field, other in changes:
        assert make_key(**{**base, field: other}) != key, field


def test_miss_then_hit(tmp_path):
    cache = RationaleCache(tmp_path)
    key = make_key(text="hello")
    assert cache.get(key) is None
    assert (cache.hits, cache.misses) == (0, 1)
    cache.put(key, CachedRationale([5, 6, 2], "five six", False))
    got = cache.get(key)
    assert got == CachedRationale([5, 6, 2], "five six", False)
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(cache) == 1 and key in cache
    # no temporary files left behind
    assert not list(tmp_path.rglob("*.tmp"))


def test_truncated_flag_round_trips(tmp_path):
    cache = RationaleCache(tmp_path)
    key = make_key(text="long")
    cache.put(key, CachedRationale([1, 2, 3], "one two three", True))
    assert cache.get(key).truncated is True


@pytest.mark.parametrize("damage", ["truncate", "garbage", "checksum", "wrong_key"])
def test_corrupt_entry_is_dropped_and_regenerated(tmp_path, damage):
    cache = RationaleCache(tmp_path)
    key = make_key(text="x")
    path = cache.put(key, CachedRationale([7, 8, 9, 2], "seven eight nine", False))
    raw = path.read_bytes()
    if damage == "truncate":  # an interrupted non-atomic write
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif damage == "checksum":
        entry = json.loads(raw)
        entry["payload"]["completion_ids"] = [7, 8]
        path.write_text(json.dumps(entry))
    else:
        entry = json.loads(raw)
        entry["key"] = make_key(text="y")
        path.write_text(json.dumps(entry))
    assert cache.get(key) is None
    assert cache.recovered == 1
    assert not path.exists()  # removed so the regenerated entry replaces it
    cache.put(key, CachedRationale([7, 8, 9, 2], "seven eight nine", False))
    assert cache.get(key).completion_ids == [7, 8, 9, 2]


def test_rejects_non_hex_keys(tmp_path):
    with pytest.raises(ValueError, match="hex digest"):
        RationaleCache(tmp_path).path("../../etc/passwd")


def _writer(directory: str, worker: int, n_keys: int, rounds: int) -> None:
    cache = RationaleCache(directory)
    for r in range(rounds):
        for k in range(n_keys):
            ids = list(range(k, k + 50))
            cache.put(make_key(text=f"text-{k}"), CachedRationale(ids, f"rationale {k} " * 20, k % 2 == 0),
                      meta={"worker": worker, "round": r})


@pytest.mark.slow
def test_two_processes_writing_the_same_keys(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 20, 15)) for w in range(2)]
    for p in procs:
        p.start()
    # read concurrently: every read is a miss or a whole, valid entry, never a corrupt one
    reader = RationaleCache(tmp_path)
    while any(p.is_alive() for p in procs):
        for k in range(20):
            got = reader.get(make_key(text=f"text-{k}"))
            assert got is None or got.completion_ids == list(range(k, k + 50))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reader.recovered == 0
    final = RationaleCache(tmp_path)
    for k in range(20):
        got = final.get(make_key(text=f"text-{k}"))
        assert got == CachedRationale(list(range(k, k + 50)), f"rationale {k} " * 20, k % 2 == 0)
    assert final.recovered == 0 and len(final) == 20
    assert not list(tmp_path.rglob("*.tmp"))


def test_model_fingerprint_tracks_weights(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_path))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.view(-1)[0] += 1e-3
    assert model_fingerprint(model) != fp


def test_fresh_lora_adapter_keeps_the_base_fingerprint_and_a_trained_one_changes_it(tiny_model_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    fp = model_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_path))
    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                             LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert model_fingerprint(wrapped) == fp  # every lora_B is zero: the same function as the base model
    with torch.no_grad():
        wrapped.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.view(-1)[0] += 1e-3
    assert model_fingerprint(wrapped) != fp


def test_lora_adapter_with_modules_to_save_is_hashed_as_it_is(tiny_model_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    fp = model_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_path))
    wrapped = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                             LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    assert model_fingerprint(wrapped) != fp


def test_settings_save_failure_leaves_no_file(tmp_path):
    from grace_trl.settings import GRACESettings

    with pytest.raises(TypeError):
        GRACESettings(chat_template_kwargs={"not_json": object()}).save(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    path = GRACESettings(pooling="last").save(str(tmp_path))
    with pytest.raises(TypeError):  # a failed rewrite keeps the previous file whole
        GRACESettings(chat_template_kwargs={"not_json": object()}).save(str(tmp_path))
    assert GRACESettings.load(str(tmp_path)).pooling == "last" and os.listdir(tmp_path) == [os.path.basename(path)]
