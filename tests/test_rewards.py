"""Reward math against hand-computed values, and the paper-variant cancellation."""

import math

import pytest
import torch
import torch.nn.functional as F

from grace_trl.rewards import GRACEReward, RolloutEmbeddings, grace_reward_components, think_format_reward


def unit(*xs):
    return F.normalize(torch.tensor(xs, dtype=torch.float32), dim=-1)


def sup_batch(truncated=None):
    # 2 groups x G=2 rollouts in 2-D, angles chosen so every cosine is easy to write down.
    def ang(deg):
        return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]

    policy = torch.tensor([ang(0), ang(60), ang(90), ang(180)])
    anchors = torch.tensor([ang(30), ang(120)])  # q_0, q_1
    negatives = torch.tensor([[ang(90)], [ang(0)]])  # n_0, n_1
    return RolloutEmbeddings(policy=policy, anchors=anchors, negatives=negatives,
                             truncated=torch.tensor(truncated or [False] * 4), completion_lengths=torch.ones(4),
                             num_generations=2)


def c(deg):
    return math.cos(math.radians(deg))


def test_supervised_paper_by_hand():
    out = grace_reward_components(sup_batch(), variant="paper")
    # group 0: q=30°, n=90°, rollouts 0°, 60°; other group's rollouts 90°, 180°
    cross0 = max(c(30 - 90), c(180 - 30))  # max_l cos(q_0, p_{1,l})
    r00 = (c(30) - c(60) + 0.2 * c(60) - 0.2 * cross0) / 0.1
    r01 = (c(30) - c(60) + 0.2 * c(60) - 0.2 * cross0) / 0.1
    # group 1: q=120°, n=0°, rollouts 90°, 180°; other group's rollouts 0°, 60°
    cross1 = max(c(120), c(60))
    r10 = (c(30) - c(120) + 0.2 * c(90) - 0.2 * cross1) / 0.1
    r11 = (c(60) - c(120) + 0.2 * c(90) - 0.2 * cross1) / 0.1
    assert out["reward"].tolist() == pytest.approx([r00, r01, r10, r11], abs=1e-5)


def test_supervised_effective_by_hand():
    out = grace_reward_components(sup_batch(), variant="effective")
    # -cos(p_k, n) and -max_{g'≠g} cos(p_k, q_g') (one other group here)
    r00 = (c(30) - c(90) + 0.2 * c(60) - 0.2 * c(0 - 120)) / 0.1
    r01 = (c(30) - c(30) + 0.2 * c(60) - 0.2 * c(60 - 120)) / 0.1
    r10 = (c(30) - c(90) + 0.2 * c(90) - 0.2 * c(90 - 30)) / 0.1
    r11 = (c(60) - c(180) + 0.2 * c(90) - 0.2 * c(180 - 30)) / 0.1
    assert out["reward"].tolist() == pytest.approx([r00, r01, r10, r11], abs=1e-5)


def test_unsupervised_by_hand():
    b = sup_batch()
    b = RolloutEmbeddings(policy=b.policy, anchors=b.anchors, negatives=None, truncated=b.truncated,
                          completion_lengths=b.completion_lengths, num_generations=2, mode="unsupervised")
    for variant in ("paper", "effective"):
        out = grace_reward_components(b, mode="unsupervised", variant=variant, lambda_consistency=0.5,
                                      lambda_cross=0.3, tau=0.5)
        # a_0=30°, a_1=120°; cross is mean over the other group's anchor (only one)
        r00 = (c(30) + 0.5 * c(60) - 0.3 * c(120)) / 0.5
        r01 = (c(30) + 0.5 * c(60) - 0.3 * c(60)) / 0.5
        r10 = (c(30) + 0.5 * c(90) - 0.3 * c(60)) / 0.5
        r11 = (c(60) + 0.5 * c(90) - 0.3 * c(150)) / 0.5
        assert out["reward"].tolist() == pytest.approx([r00, r01, r10, r11], abs=1e-5)


def test_truncated_rollouts_get_minus_gamma():
    out = grace_reward_components(sup_batch(truncated=[False, True, False, False]), truncation_penalty=1.5)
    assert out["reward"][1].item() == -1.5
    assert out["reward"][0].item() != -1.5


def advantages(rewards, G):
    r = rewards.view(-1, G)
    return (r - r.mean(1, keepdim=True)).reshape(-1)


def random_batch(B=3, G=4, d=16, n_neg=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return RolloutEmbeddings(
        policy=F.normalize(torch.randn(B * G, d, generator=g), dim=-1),
        anchors=F.normalize(torch.randn(B, d, generator=g), dim=-1),
        negatives=F.normalize(torch.randn(B, n_neg, d, generator=g), dim=-1),
        truncated=torch.zeros(B * G, dtype=torch.bool), completion_lengths=torch.ones(B * G), num_generations=G)


def without_negatives(batch):
    return RolloutEmbeddings(policy=batch.policy, anchors=batch.anchors, negatives=None, truncated=batch.truncated,
                             completion_lengths=batch.completion_lengths, num_generations=batch.num_generations)


def test_paper_variant_negative_and_cross_terms_cancel_in_advantages():
    batch = random_batch()
    full = grace_reward_components(batch, variant="paper")["reward"]
    plain = grace_reward_components(without_negatives(batch), variant="paper", lambda_cross=0.0)["reward"]
    assert not torch.allclose(full, plain)  # the rewards differ ...
    assert torch.allclose(advantages(full, 4), advantages(plain, 4), atol=1e-6)  # ... the advantages do not


def test_effective_variant_terms_do_not_cancel():
    batch = random_batch()
    full = grace_reward_components(batch, variant="effective")["reward"]
    plain = grace_reward_components(without_negatives(batch), variant="effective", lambda_cross=0.0)["reward"]
    assert (advantages(full, 4) - advantages(plain, 4)).abs().max() > 1e-2


def test_reward_callable_returns_local_rows_and_logs():
    batch = random_batch(B=2, G=2)
    batch.local = slice(2, 4)
    logged = {}
    fn = GRACEReward(variant="effective")
    out = fn(prompts=["a", "b"], completions=["x", "y"], grace_embeddings=[batch, batch],
             log_metric=lambda k, v: logged.__setitem__(k, v))
    full = grace_reward_components(batch)["reward"]
    assert out == pytest.approx(full[2:4].tolist())
    assert {"grace/pos_sim", "grace/neg_sim", "grace/margin", "grace/truncation_rate"} <= set(logged)


def test_reward_callable_without_embeddings_fails_loudly():
    with pytest.raises(ValueError, match="grace_embeddings"):
        GRACEReward()(prompts=["a"], completions=["b"])


def test_think_format_reward():
    assert think_format_reward([[{"content": "<think>x</think> y"}], "no tags"]) == [1.0, 0.0]
