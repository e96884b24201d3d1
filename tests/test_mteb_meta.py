"""grace_trl's mteb ModelMeta: meta.load_model() and mteb.evaluate work for a local checkpoint."""

from __future__ import annotations

import shutil

import pytest

from grace_trl.settings import GRACESettings


@pytest.fixture()
def checkpoint(tmp_path, tiny_model_path):
    ckpt = tmp_path / "grace-tiny"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings(max_new_tokens=3).save(str(ckpt))
    return ckpt


def test_model_meta_loads_and_evaluates_a_local_checkpoint(checkpoint, shared_data, tmp_path):
    import mteb

    from grace_trl.evaluation.mteb_wrapper import GRACEMTEBEncoder, grace_model_meta
    from grace_trl.evaluation.tasks import get_local_task

    meta = grace_model_meta(str(checkpoint))
    assert meta.name == "grace-trl/grace-tiny" and meta.experiment_kwargs == {"rationale": True, "max_new_tokens": 3}
    model = meta.load_model(device="cpu")
    assert isinstance(model, GRACEMTEBEncoder) and model.use_rationale and model.max_new_tokens == 3
    assert model.mteb_model_meta.revision == meta.revision
    # what mteb records about the model, read from the folder without loading it, agrees with the loaded model
    for fact in ("n_parameters", "embed_dim", "max_tokens"):
        assert getattr(meta, fact) is not None and getattr(meta, fact) == getattr(model.mteb_model_meta, fact), fact

    no_rationale = grace_model_meta(str(checkpoint), use_rationale=False).load_model(device="cpu")
    assert not no_rationale.use_rationale
    task = get_local_task("STSBenchmark", data_dir=shared_data, limit=6)
    cache = mteb.ResultCache(tmp_path / "mteb")
    result = mteb.evaluate(no_rationale, [task], cache=cache, overwrite_strategy="always")
    (task_result,) = result.task_results
    assert task_result.task_name == "STSBenchmark" and -1.0 <= task_result.get_score() <= 1.0
    files = [p for p in (tmp_path / "mteb").rglob("STSBenchmark.json")]
    assert len(files) == 1 and "grace-trl__grace-tiny" in str(files[0]) and meta.revision in str(files[0])
    # the same run through the encoder built by hand gives the same score
    direct = mteb.evaluate(GRACEMTEBEncoder(no_rationale.encoder, use_rationale=False), [task], cache=None)
    assert direct.task_results[0].get_score() == pytest.approx(task_result.get_score(), abs=1e-6)


def test_revision_follows_the_weights_and_bad_names_fail(checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from grace_trl.evaluation.mteb_wrapper import grace_model_meta

    before = grace_model_meta(str(checkpoint)).revision
    weights = load_file(checkpoint / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.ones_like(weights[name])
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})
    assert grace_model_meta(str(checkpoint)).revision != before  # a later checkpoint: its own result folder
    with pytest.raises(FileNotFoundError, match="neither a local checkpoint folder"):
        grace_model_meta(str(tmp_path / "missing" / "folder"))


def test_model_meta_for_a_hub_id_loads_the_cached_snapshot(checkpoint, tmp_path, monkeypatch):
    """The Hub path goes through huggingface_hub.snapshot_download; offline it serves the local Hub cache."""
    from huggingface_hub import constants

    from grace_trl.evaluation.mteb_wrapper import grace_model_meta

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--grace-org--grace-tiny"
    shutil.copytree(checkpoint, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    meta = grace_model_meta("grace-org/grace-tiny", use_rationale=False, revision=commit)
    assert meta.name == "grace-org/grace-tiny" and meta.revision == commit
    model = meta.load_model(device="cpu")
    assert model.encoder.settings.max_new_tokens == 3  # grace_config.json came with the snapshot
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError, match="Cannot find an appropriate cached snapshot"):
        grace_model_meta("grace-org/missing", use_rationale=False).load_model(device="cpu")


def test_second_evaluation_reads_mteb_embedding_cache(checkpoint, shared_data, tmp_path):
    """mteb's CachedEmbeddingWrapper around the encoder: a repeated evaluation runs no forward pass."""
    import mteb
    from mteb.models.cache_wrappers import CachedEmbeddingWrapper

    from grace_trl.evaluation.mteb_wrapper import GRACEMTEBEncoder, with_embedding_cache
    from grace_trl.evaluation.tasks import get_local_task

    model = GRACEMTEBEncoder.from_pretrained(str(checkpoint), use_rationale=True, device="cpu")
    forwards = []
    model.encoder.model.register_forward_pre_hook(lambda *_: forwards.append(1))

    def evaluate(wrapped):
        task = get_local_task("STSBenchmark", data_dir=shared_data, limit=6)
        (result,) = mteb.evaluate(wrapped, [task], cache=None).task_results
        return result.get_score()

    first = evaluate(with_embedding_cache(model, tmp_path / "emb"))
    assert forwards, "the first evaluation must run the model"
    forwards.clear()
    cached = with_embedding_cache(model, tmp_path / "emb")  # a new wrapper: the vectors come from disk
    assert isinstance(cached, CachedEmbeddingWrapper)
    assert evaluate(cached) == first and not forwards
    # other GRACE settings for the same weights are another cache folder, not a stale hit
    model.encoder.settings.pooling = "last"
    evaluate(with_embedding_cache(model, tmp_path / "emb"))
    assert forwards
