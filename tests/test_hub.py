"""Hub packaging: the prepared folder loads offline with transformers, sentence-transformers and GRACEEncoder;
the upload is checked at huggingface_hub's HTTP boundary (a mock httpx2 transport), never by patching HfApi."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from grace_trl.settings import GRACESettings

TOKEN = "hf_testtoken_must_not_leak_0123456789"
TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]


@pytest.fixture()
def checkpoint(tmp_path, tiny_model_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings(max_new_tokens=32, reward_variant="paper").save(str(ckpt))
    (ckpt / "optimizer.pt").write_bytes(b"trainer state, not for the Hub")
    return ckpt


@pytest.fixture()
def prepared(tmp_path, checkpoint):
    from grace_trl.hub import prepare_hub_folder

    results = tmp_path / "results.json"
    results.write_text(json.dumps({"STSBenchmark": {"cosine_spearman": 0.8123}, "SciFact": {"ndcg_at_10": 0.61}}))
    return Path(prepare_hub_folder(str(checkpoint), str(tmp_path / "repo"), "grace-org/grace-tiny", str(results),
                                   base_model="HuggingFaceTB/SmolLM2-135M-Instruct"))


def test_prepared_folder_layout_and_card(prepared, checkpoint):
    names = {p.name for p in prepared.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "grace_config.json", "README.md", "modules.json",
            "config_sentence_transformers.json", "grace_sentence_transformers.json", "1_Normalize"} <= names
    assert "optimizer.pt" not in names
    assert GRACESettings.load(str(prepared)) == GRACESettings.load(str(checkpoint))
    modules = json.loads((prepared / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["grace_trl.st_module.GRACETransformer",
                                            "sentence_transformers.base.modules.normalize.Normalize"]
    card = (prepared / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert "grace" in meta["tags"] and "sentence-transformers" in meta["tags"]
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    metrics = {r["dataset"]["name"]: r["metrics"][0] for r in meta["model-index"][0]["results"]}
    assert metrics["STSBenchmark"] == {"type": "cosine_spearman", "value": 0.8123}
    assert "GRACEEncoder.from_pretrained(\"grace-org/grace-tiny\")" in card and "0.8123" in card
    assert "| reward_variant | paper |" in card and "2510.04506" in card


def test_sentence_transformers_loads_offline_and_matches_grace_encoder(prepared):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from grace_trl.encoder import GRACEEncoder

    model = SentenceTransformer(str(prepared), device="cpu", local_files_only=True, trust_remote_code=True)
    got = model.encode(TEXTS, convert_to_numpy=True)
    assert got.shape == (3, 64)
    assert got.dtype.kind == "f" and abs(float((got**2).sum(axis=1).mean()) - 1.0) < 1e-5
    expected = GRACEEncoder.from_pretrained(str(prepared), device="cpu").encode(TEXTS, use_rationale=False,
                                                                                show_progress_bar=False)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # query / document helpers use the same GRACE prompt
    np.testing.assert_allclose(model.encode_query(TEXTS[:1]), expected[:1], atol=1e-4)
    np.testing.assert_allclose(model.encode_document(TEXTS[:1]), expected[:1], atol=1e-4)


def test_transformers_and_grace_encoder_load_the_folder(prepared, checkpoint):
    from transformers import AutoModelForCausalLM

    from grace_trl.encoder import GRACEEncoder

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(prepared)(input_ids=ids).logits
        b = AutoModelForCausalLM.from_pretrained(checkpoint)(input_ids=ids).logits
    torch.testing.assert_close(a, b)
    encoder = GRACEEncoder.from_pretrained(str(prepared), device="cpu")
    assert encoder.settings == GRACESettings.load(str(checkpoint))
    vec = encoder.encode(TEXTS[:2], use_rationale=False, show_progress_bar=False)
    assert vec.shape == (2, 64)


def test_lora_checkpoint_is_merged_before_push(tmp_path, tiny_model_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from grace_trl.hub import prepare_hub_folder

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_path),
                                LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False,
                                           task_type="CAUSAL_LM"))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    GRACESettings().save(str(adapter))
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    out = Path(prepare_hub_folder(str(adapter), str(tmp_path / "repo"), "org/lora-merged"))
    assert not (out / "adapter_config.json").exists() and (out / "modules.json").is_file()
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    card = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert "base_model" not in card  # a local base path is not advertised as a Hub model


class FakeHub:
    """Answers huggingface_hub's HTTP calls for create_repo + upload_folder and records them."""

    def __init__(self):
        self.requests = []
        self.lfs_uploads: dict[str, bytes] = {}
        self.commit_lines: list[dict] = []

    def __call__(self, request):
        import httpx2

        body = request.read()
        self.requests.append((request.method, request.url.host, request.url.path, dict(request.headers)))
        path = request.url.path
        if request.method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            self.create_payload = payload
            return httpx2.Response(200, json={"url": "https://huggingface.co/grace-org/grace-tiny",
                                              "name": "grace-org/grace-tiny"})
        if request.method == "POST" and path == "/api/validate-yaml":  # the Hub checks README.md metadata first
            self.validated_readme = json.loads(body)["content"]
            yaml.safe_load(self.validated_readme.split("---")[1])
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if request.method == "POST" and path == "/api/models/grace-org/grace-tiny/preupload/main":
            files = json.loads(body)["files"]
            return httpx2.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                 "shouldIgnore": False} for f in files]})
        if request.method == "POST" and path == "/grace-org/grace-tiny.git/info/lfs/objects/batch":
            objects = json.loads(body)["objects"]
            return httpx2.Response(200, json={"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"],
                 "actions": {"upload": {"href": f"https://lfs-store.example/upload/{o['oid']}"}}} for o in objects]})
        if request.method == "PUT" and request.url.host == "lfs-store.example":
            self.lfs_uploads[path.rsplit("/", 1)[-1]] = body
            return httpx2.Response(200)
        if request.method == "POST" and path == "/api/models/grace-org/grace-tiny/commit/main":
            self.commit_lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            return httpx2.Response(200, json={"commitUrl": "https://huggingface.co/grace-org/grace-tiny/commit/abc123",
                                              "commitOid": "abc123" + "0" * 34, "success": True})
        return httpx2.Response(404, json={"error": f"unexpected {request.method} {request.url}"})


@pytest.fixture()
def fake_hub(monkeypatch):
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    hub = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # nothing leaves the process: the transport is fake
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # plain LFS, so every byte crosses httpx2
    _http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub), follow_redirects=True,
                                                   event_hooks={"request": [_http.hf_request_event_hook]}))
    try:
        yield hub
    finally:
        _http.set_client_factory(_http.default_client_factory)


def test_push_sends_the_folder_through_the_hub_http_api(fake_hub, checkpoint, tmp_path, caplog, capsys):
    from grace_trl.commands.push import main
    from grace_trl.hub import prepare_hub_folder

    caplog.set_level(logging.DEBUG)
    assert main(["--checkpoint", str(checkpoint), "--repo-id", "grace-org/grace-tiny", "--private",
                 "--token", TOKEN, "--commit-message", "GRACE tiny"]) == 0
    out = capsys.readouterr()
    assert "commit/abc123" in out.out

    # huggingface_hub may also probe GET /api/agent-harnesses (a cached registry); the fake answers 404
    calls = [(m, p) for m, _, p, _ in fake_hub.requests if p != "/api/agent-harnesses"]
    assert calls[0] == ("POST", "/api/repos/create")
    assert fake_hub.create_payload["name"] == "grace-tiny" and fake_hub.create_payload["organization"] == "grace-org"
    assert fake_hub.create_payload["visibility"] == "private" and fake_hub.create_payload["type"] == "model"
    order = [p for _, p in calls]
    assert order.index("/api/models/grace-org/grace-tiny/preupload/main") < \
        order.index("/grace-org/grace-tiny.git/info/lfs/objects/batch") < \
        order.index("/api/models/grace-org/grace-tiny/commit/main")
    for method, host, path, headers in fake_hub.requests:
        if path == "/api/agent-harnesses":
            assert "authorization" not in headers
        elif host == "huggingface.co":
            assert headers.get("authorization") == f"Bearer {TOKEN}", path
        else:
            assert TOKEN not in json.dumps(headers), "the token must not reach the LFS storage host"

    header = fake_hub.commit_lines[0]
    assert header["key"] == "header" and header["value"]["summary"] == "GRACE tiny"
    regular = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in fake_hub.commit_lines
               if line["key"] == "file"}
    lfs = {line["value"]["path"]: line["value"]["oid"] for line in fake_hub.commit_lines if line["key"] == "lfsFile"}
    expected_dir = Path(prepare_hub_folder(str(checkpoint), str(tmp_path / "expected"), "grace-org/grace-tiny"))
    expected = {str(p.relative_to(expected_dir)): p.read_bytes() for p in expected_dir.rglob("*") if p.is_file()}
    assert set(regular) | set(lfs) == set(expected)
    assert "optimizer.pt" not in regular and "model.safetensors" in lfs
    for name, content in regular.items():
        if name != "README.md":
            assert content == expected[name], name
    assert regular["README.md"].decode() == fake_hub.validated_readme
    weights = expected["model.safetensors"]
    assert lfs["model.safetensors"] == hashlib.sha256(weights).hexdigest()
    assert fake_hub.lfs_uploads[lfs["model.safetensors"]] == weights
    assert TOKEN not in caplog.text and TOKEN not in out.out and TOKEN not in out.err


def test_bad_results_file_fails_before_any_upload(fake_hub, checkpoint, tmp_path):
    from grace_trl.hub import push_to_hub

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"STSBenchmark": {"spearman": "high"}}))
    with pytest.raises(ValueError, match=r"results\['STSBenchmark'\]\['spearman'\] must be a number"):
        push_to_hub(str(checkpoint), "grace-org/grace-tiny", token=TOKEN, results=str(bad))
    assert fake_hub.requests == []


def test_sentence_transformers_prefix_uses_the_chat_template_kwargs(smollm2_path):
    from transformers import AutoTokenizer

    from grace_trl.prompts import PromptEncoder
    from grace_trl.st_module import GRACETransformer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    tok.chat_template = "{% if persona is defined %}[{{ persona }}]{% endif %}" + tok.chat_template
    settings = GRACESettings(instruction="Represent:", chat_template_kwargs={"persona": "analyst"})
    features = GRACETransformer(None, tok, settings).preprocess(["A dog runs."])
    ids = features["input_ids"][0][features["attention_mask"][0].bool()].tolist()
    assert tok.decode(ids).startswith("[analyst]")
    # the sentence-transformers input is exactly the training prompt
    pe = PromptEncoder(tok, settings.system_prompt, settings.instruction, settings.chat_template_kwargs)
    assert ids == pe("A dog runs.").input_ids


def test_exported_pooling_follows_the_settings(tmp_path, tiny_model_path):
    """pooling="last" is exported as last-token pooling, and the card says so."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from grace_trl.encoder import GRACEEncoder
    from grace_trl.hub import prepare_hub_folder

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings(pooling="last").save(str(ckpt))
    folder = Path(prepare_hub_folder(str(ckpt), str(tmp_path / "repo"), "grace-org/grace-last"))
    got = SentenceTransformer(str(folder), device="cpu", local_files_only=True, trust_remote_code=True).encode(TEXTS)
    encoder = GRACEEncoder.from_pretrained(str(folder), device="cpu")
    np.testing.assert_allclose(got, encoder.encode(TEXTS, use_rationale=False, show_progress_bar=False), atol=1e-4)
    mean = GRACEEncoder(encoder.model, encoder.tokenizer, GRACESettings(pooling="mean"))
    assert not np.allclose(got, mean.encode(TEXTS, use_rationale=False, show_progress_bar=False), atol=1e-3)
    card = (folder / "README.md").read_text()
    assert "final token" in card and "the mean of its last-layer hidden states" not in card


def test_pooling_sentence_transformers_cannot_express_is_refused(tmp_path, tiny_model_path):
    from grace_trl.hub import prepare_hub_folder
    from grace_trl.st_module import write_sentence_transformers_files

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings(pooling="rationale").save(str(ckpt))
    with pytest.raises(ValueError, match="pooling='rationale'.*sentence-transformers"):
        prepare_hub_folder(str(ckpt), str(tmp_path / "repo"), "grace-org/grace-rationale")
    assert not (tmp_path / "repo").exists()  # refused before any work
    with pytest.raises(ValueError, match="pooling='rationale'"):
        write_sentence_transformers_files(str(ckpt))
    assert not (ckpt / "modules.json").exists()


def test_push_refusal_is_one_line(tmp_path, tiny_model_path, capsys):
    from grace_trl.cli import main

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path, ckpt)
    GRACESettings(pooling="rationale").save(str(ckpt))
    rc = main(["push", "--checkpoint", str(ckpt), "--repo-id", "grace-org/x", "--dry-run", str(tmp_path / "repo")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("grace-trl push: error: ") and "pooling='rationale'" in err[-1]
    assert not (tmp_path / "repo").exists()
