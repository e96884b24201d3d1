r"""GRACE rewards: contrastive scores of rationales, as plain TRL reward callables.

A TRL reward function is called as ``f(prompts, completions, completion_ids, **columns)`` and returns
one float per local completion. :class:`GRACEReward` additionally reads the ``grace_embeddings``
keyword that :class:`~grace_trl.GRACETrainer` adds: one shared :class:`RolloutEmbeddings` holding
the pooled vectors of *all* processes' rollouts and anchors (cross-group terms need every group).

Supervised (rollouts p_k of the positive document of group g; anchors q_g, n_g):

* ``paper``:      R = [cos(q,p_k) − cos(q,n) + λ1·mean_{j≠k} cos(p_k,p_j) − λ2·mean_{g'≠g} max_l cos(q_g,p_{g',l})] / τ
* ``effective``:  R = [cos(q,p_k) − cos(p_k,n) + λ1·mean_{j≠k} cos(p_k,p_j) − λ2·max_{g'≠g} cos(p_k,q_{g'})] / τ

In ``paper`` the negative and cross-group terms do not depend on k, so subtracting the group mean
(GRPO's baseline) removes them: they cost compute and teach nothing. ``effective`` keeps their
intent (push the *rationale* away from the hard negative and from other groups' queries) with
terms that vary across the rollouts of a group. With several negatives, negative terms are
averaged over them.

Unsupervised (rollouts x_k, anchor a_g of the same text), both variants:
R = [cos(a_g,x_k) + λ1·mean_{j≠k} cos(x_k,x_j) − λ2·mean_{g'≠g} cos(x_k,a_{g'})] / τ
(here every term already depends on k).

A rollout cut at the length limit without EOS gets R = −γ instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from .data import DEFAULT_MODE

logger = logging.getLogger(__name__)

GRACE_REWARD_NAME = "grace"
REWARD_VARIANTS = ("paper", "effective")
# The one source of the reward defaults: GRACEConfig, GRACESettings and GRACEReward read them from here.
DEFAULT_REWARD_VARIANT = "effective"
DEFAULT_LAMBDA_CONSISTENCY = 0.2  # λ1 (paper)
DEFAULT_LAMBDA_CROSS = 0.2  # λ2 (paper)
DEFAULT_TAU = 0.1  # τ (paper)
DEFAULT_TRUNCATION_PENALTY = 1.0  # γ (paper)


@dataclass
class RolloutEmbeddings:
    """Pooled vectors for one generation batch, gathered over processes; rows grouped by G."""

    policy: torch.Tensor  # (N, d) rollouts, group g = rows [g*G, (g+1)*G)
    anchors: torch.Tensor  # (num_groups, d): query (supervised) or text anchor (unsupervised)
    negatives: torch.Tensor | None  # (num_groups, num_negatives, d) or None
    truncated: torch.Tensor  # (N,) bool: hit the length limit without EOS
    completion_lengths: torch.Tensor  # (N,) generated tokens per rollout
    num_generations: int
    mode: str = DEFAULT_MODE
    local: slice = field(default_factory=lambda: slice(None))  # this process's rows of ``policy``

    @property
    def num_groups(self) -> int:
        return self.policy.shape[0] // self.num_generations


def _mean_over_others(sim: torch.Tensor) -> torch.Tensor:
    """mean_{j≠k} sim[..., k, j] for square (..., G, G) matrices; 0 when G == 1."""
    g = sim.shape[-1]
    if g < 2:
        return torch.zeros(sim.shape[:-1], dtype=sim.dtype, device=sim.device)
    off = sim.sum(-1) - torch.diagonal(sim, dim1=-2, dim2=-1)
    return off / (g - 1)


def grace_reward_components(
    batch: RolloutEmbeddings,
    mode: str = DEFAULT_MODE,
    variant: str = DEFAULT_REWARD_VARIANT,
    lambda_consistency: float = DEFAULT_LAMBDA_CONSISTENCY,
    lambda_cross: float = DEFAULT_LAMBDA_CROSS,
    tau: float = DEFAULT_TAU,
    truncation_penalty: float = DEFAULT_TRUNCATION_PENALTY,
) -> dict[str, torch.Tensor]:
    """Every term of the GRACE reward, per rollout (shape (N,)); ``reward`` is the final value."""
    if variant not in REWARD_VARIANTS:
        raise ValueError(f"reward variant must be one of {REWARD_VARIANTS}, got {variant!r}")
    G, B = batch.num_generations, batch.num_groups
    if batch.policy.shape[0] != B * G:
        raise ValueError(f"{batch.policy.shape[0]} rollouts do not form whole groups of {G}")
    if batch.anchors.shape[0] != B:
        raise ValueError(f"expected {B} anchor vectors (one per group), got {batch.anchors.shape[0]}")
    p = batch.policy.float().view(B, G, -1)
    a = batch.anchors.float()
    n = batch.negatives.float() if mode == "supervised" and batch.negatives is not None else None
    if n is not None and n.shape[1] == 0:
        n = None
    # A non-finite vector is left out of every term (as if absent) instead of turning the whole
    # batch NaN through the consistency and cross-group terms; see ``dropped`` below.
    ok_p = torch.isfinite(p).all(-1)  # (B, G)
    ok_a = torch.isfinite(a).all(-1)  # (B,)
    ok_n = torch.isfinite(n).all(-1) if n is not None else None  # (B, n)
    if not (ok_p.all() and ok_a.all() and (ok_n is None or ok_n.all())):
        p, a = p.nan_to_num(0.0, 0.0, 0.0), a.nan_to_num(0.0, 0.0, 0.0)
        n = n.nan_to_num(0.0, 0.0, 0.0) if n is not None else None
    zeros = torch.zeros(B, G, device=p.device)

    pos = torch.einsum("bd,bgd->bg", a, p)  # cos(anchor_g, rollout_k)
    if ok_p.all():
        consistency = _mean_over_others(torch.einsum("bgd,bhd->bgh", p, p))
    else:
        sim = torch.einsum("bgd,bhd->bgh", p, p) * ok_p.unsqueeze(1)  # only finite partners j
        others = (ok_p.sum(-1, keepdim=True) - ok_p.float()).clamp(min=1)
        consistency = (sim.sum(-1) - torch.diagonal(sim, dim1=-2, dim2=-1)) / others
    other = ~torch.eye(B, dtype=torch.bool, device=p.device)  # [g, g'] true when g' ≠ g
    # a group whose anchor or every negative is not finite is dropped, from its own reward and the others'
    group_ok = ok_a & (ok_n.any(-1) if ok_n is not None else True)

    neg = zeros
    if n is not None:
        weights = ok_n.float() / ok_n.float().sum(-1, keepdim=True).clamp(min=1)  # mean over finite negatives
        if variant == "paper":
            neg = (torch.einsum("bd,bnd->bn", a, n) * weights).sum(-1, keepdim=True).expand(B, G)
        else:
            neg = (torch.einsum("bgd,bnd->bgn", p, n) * weights.unsqueeze(1)).sum(-1)

    cross = zeros
    if B > 1:
        if mode == "supervised" and variant == "paper":
            # q_g against every rollout of every group: (B, B, G) -> max over l -> mean over g' != g
            qp = torch.einsum("bd,cgd->bcg", a, p).masked_fill(~ok_p.unsqueeze(0), float("-inf")).amax(-1)
            use = other & (ok_p.any(-1) & group_ok).unsqueeze(0)
            cross = ((qp.masked_fill(~use, 0.0)).sum(-1) / use.sum(-1).clamp(min=1)).unsqueeze(1).expand(B, G)
        elif mode == "supervised":
            use = other & group_ok.unsqueeze(0)
            pq = torch.einsum("bgd,cd->bgc", p, a).masked_fill(~use.unsqueeze(1), float("-inf"))
            cross = pq.amax(-1)
            cross = torch.where(torch.isfinite(cross), cross, torch.zeros_like(cross))
        else:
            use = other & group_ok.unsqueeze(0)
            pa = torch.einsum("bgd,cd->bgc", p, a) * use.unsqueeze(1)
            cross = pa.sum(-1) / use.sum(-1, keepdim=True).clamp(min=1)

    raw = (pos - neg + lambda_consistency * consistency - lambda_cross * cross) / tau
    trunc = batch.truncated.view(B, G).to(p.device)
    reward = torch.where(trunc, torch.full_like(raw, -float(truncation_penalty)), raw)
    # Unscorable: a rollout's own vector, its group's anchor or every negative of the group is not
    # finite, or the reward itself overflowed. Such a rollout gets the mean reward of the scorable
    # rollouts of its group (zero advantage, baseline unchanged); a group with none gets 0 throughout.
    dropped = ~((ok_p | trunc) & group_ok.unsqueeze(1)) | ~torch.isfinite(reward)
    if dropped.any():
        kept = (~dropped).float()
        fill = (reward.nan_to_num(0.0) * kept).sum(-1, keepdim=True) / kept.sum(-1, keepdim=True).clamp(min=1)
        reward = torch.where(dropped, fill.expand(B, G), reward)
    flat = lambda t: t.reshape(-1)  # noqa: E731
    return {
        "dropped": flat(dropped),
        "reward": flat(reward),
        "raw": flat(raw),
        "pos_sim": flat(pos),
        "neg_sim": flat(neg),
        "margin": flat(pos - neg),
        "consistency": flat(consistency),
        "cross": flat(cross),
    }


class GRACEReward:
    """The GRACE contrastive reward as a TRL reward callable (name ``grace`` in logs).

    Call signature (keywords supplied by GRACETrainer/TRL)::

        reward(prompts, completions, grace_embeddings: list[RolloutEmbeddings], log_metric=None, **kwargs)
            -> list[float]   # one reward per local completion
    """

    __name__ = GRACE_REWARD_NAME

    def __init__(self, mode: str = DEFAULT_MODE, variant: str = DEFAULT_REWARD_VARIANT,
                 lambda_consistency: float = DEFAULT_LAMBDA_CONSISTENCY, lambda_cross: float = DEFAULT_LAMBDA_CROSS,
                 tau: float = DEFAULT_TAU, truncation_penalty: float = DEFAULT_TRUNCATION_PENALTY):
        self.params = dict(mode=mode, variant=variant, lambda_consistency=lambda_consistency,
                           lambda_cross=lambda_cross, tau=tau, truncation_penalty=truncation_penalty)

    @classmethod
    def from_config(cls, args) -> "GRACEReward":
        return cls(**args.reward_params())

    def __call__(self, prompts, completions, grace_embeddings=None, log_metric=None, **kwargs) -> list[float]:
        if not grace_embeddings:
            raise ValueError("GRACEReward needs the 'grace_embeddings' keyword; use it with GRACETrainer, which "
                             "computes the rollout and anchor embeddings")
        batch: RolloutEmbeddings = grace_embeddings[0]
        comps = grace_reward_components(batch, **self.params)
        local = comps["reward"][batch.local]
        if len(local) != len(prompts):
            raise ValueError(f"GRACE embeddings cover {len(local)} local rollouts but {len(prompts)} were scored")
        dropped = comps["dropped"]
        if dropped.any():
            self._report_nonfinite(batch, dropped)
        if log_metric is not None:
            log_metric("grace/dropped_rollouts", float(dropped.sum().item()))
            ok = ~batch.truncated.to(comps["raw"].device) & ~dropped
            for name in ("pos_sim", "neg_sim", "margin", "consistency", "cross", "raw"):
                values = comps[name][ok]
                if values.numel():
                    log_metric(f"grace/{name}", values.mean().item())
            log_metric("grace/truncation_rate", batch.truncated.float().mean().item())
            log_metric("grace/rationale_length", batch.completion_lengths.float().mean().item())
        return local.tolist()

    def _report_nonfinite(self, batch: RolloutEmbeddings, dropped: torch.Tensor) -> None:
        """Name the rows whose vectors (or rewards) were not finite; counted in ``num_dropped``."""
        from .checks import nonfinite_rows

        self.num_dropped = getattr(self, "num_dropped", 0) + int(dropped.sum().item())
        parts = []
        if rows := nonfinite_rows(batch.policy):
            parts.append(f"rollout rows {rows[:10]}")
        if groups := nonfinite_rows(batch.anchors):
            parts.append(f"anchor of groups {groups[:10]}")
        if batch.negatives is not None and (groups := nonfinite_rows(batch.negatives)):
            parts.append(f"negatives of groups {groups[:10]}")
        what = ", ".join(parts) or "rewards overflowed"
        logger.warning("GRACE reward: non-finite values (%s); rollout rows %s get zero advantage "
                       "(%d dropped so far). Check the model's dtype and learning rate", what,
                       dropped.nonzero(as_tuple=True)[0].tolist()[:10], self.num_dropped)


def think_format_reward(completions, **kwargs) -> list[float]:
    """1.0 when the rationale contains a closed <think>...</think> block, else 0.0 (optional shaping)."""
    out = []
    for c in completions:
        text = c[-1]["content"] if isinstance(c, list) else c
        start, end = text.find("<think>"), text.find("</think>")
        out.append(1.0 if 0 <= start < end else 0.0)
    return out


def build_reward_funcs(names, args) -> list:
    """Reward callables from registry names (``grace``, ``think_format``)."""
    registry = {
        GRACE_REWARD_NAME: lambda: GRACEReward.from_config(args),
        "think_format": lambda: think_format_reward,
    }
    funcs = []
    for name in names:
        if name not in registry:
            raise ValueError(f"unknown reward function {name!r}; available: {sorted(registry)}")
        funcs.append(registry[name]())
    return funcs
