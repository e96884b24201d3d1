"""Per-GPU memory estimates for a GRACE recipe, so a distributed strategy is chosen before renting GPUs.

The model-state terms follow DeepSpeed's own accounting (``estimate_zero2/3_model_states_mem_needs``:
bf16 weights, bf16 + fp32 gradients, fp32 master weights and two AdamW moments); the tests check
them against DeepSpeed's estimators. Activations are an analytic count for a Llama/Qwen decoder with
SDPA/flash attention (no L² score matrix) and TRL's fused LM head, which never materialises the
(tokens × vocab) logits. Everything is an estimate: CUDA context, allocator fragmentation and NCCL
buffers are lumped into a fixed overhead.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from .generation import DEFAULT_MAX_NEW_TOKENS

GIB = 1024**3
STRATEGIES = ("ddp", "zero2", "zero3", "zero3_offload")
ACCELERATE_CONFIGS = {
    "ddp": "recipes/accelerate_configs/ddp.yaml",
    "zero2": "recipes/accelerate_configs/zero2.yaml",
    "zero3": "recipes/accelerate_configs/zero3.yaml",
    "zero3_offload": "recipes/accelerate_configs/zero3_offload.yaml",
}
# CUDA context, allocator fragmentation, NCCL buffers: a flat allowance per GPU.
FRAMEWORK_OVERHEAD_BYTES = int(2.0 * GIB)
# TRL's fused LM head projects at most this many tokens × vocabulary columns at a time (trl/kernels).
LM_HEAD_TOKEN_TILE = 4096
LM_HEAD_VOCAB_TILE = 32768
# ZeRO-3 prefetches/keeps gathered parameters; DeepSpeed budgets 4 bytes × the largest layer for it.
ZERO3_LAYER_BUFFER_BYTES_PER_PARAM = 4
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Architecture:
    """The few numbers of a decoder-only transformer that memory depends on."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = True
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3 normalises q and k per head

    # -- parameter counts -------------------------------------------------------------------------
    def linear_shapes(self) -> dict[str, tuple[int, int, bool]]:
        """(in_features, out_features, has_bias) of each linear module of one decoder layer."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        i = self.intermediate_size
        return {
            "q_proj": (h, q, self.qkv_bias),
            "k_proj": (h, kv, self.qkv_bias),
            "v_proj": (h, kv, self.qkv_bias),
            "o_proj": (q, h, self.o_bias),
            "gate_proj": (h, i, self.mlp_bias),
            "up_proj": (h, i, self.mlp_bias),
            "down_proj": (i, h, self.mlp_bias),
        }

    def layer_parameters(self) -> int:
        total = sum(a * b + (b if bias else 0) for a, b, bias in self.linear_shapes().values())
        total += 2 * self.hidden_size  # input + post-attention RMSNorm
        if self.qk_norm:
            total += 2 * self.head_dim
        return total

    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size

    def num_parameters(self) -> int:
        lm_head = 0 if self.tie_word_embeddings else self.embedding_parameters()
        return self.embedding_parameters() + lm_head + self.num_layers * self.layer_parameters() + self.hidden_size

    def largest_layer_parameters(self) -> int:
        """Largest single module, as DeepSpeed's ZeRO-3 estimator wants it (usually the embedding)."""
        return max(self.embedding_parameters(), self.layer_parameters())

    def lora_parameters(self, r: int, target_modules: Any = DEFAULT_LORA_TARGETS) -> int:
        """Trainable LoRA parameters: r × (in + out) per targeted linear of every layer."""
        shapes = self.linear_shapes()
        if target_modules in (None, "all-linear", ["all-linear"]):
            targets = list(shapes)
        else:
            targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
            unknown = [t for t in targets if t not in shapes]
            if unknown:
                raise ValueError(f"lora_target_modules {unknown} are not linear layers the planner knows "
                                 f"({sorted(shapes)} or 'all-linear')")
        return self.num_layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)

    # -- per-token activation sizes ----------------------------------------------------------------
    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype_bytes

    def saved_activation_bytes_per_token_layer(self, dtype_bytes: int = 2) -> int:
        """Tensors one decoder layer keeps for backward, per token (bf16, flash/SDPA attention).

        Two norm inputs and outputs (4h), q/k/v after RoPE (q + 2kv), attention output (q), and in the
        SwiGLU MLP the gate and up projections, SiLU(gate) and their product (4i).
        """
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return dtype_bytes * (4 * self.hidden_size + 2 * q + 2 * kv + 4 * self.intermediate_size)

    def inference_bytes_per_token_layer(self, dtype_bytes: int = 2) -> int:
        """Peak transient of one layer's no-grad forward per token (residual, q/k/v, MLP intermediates)."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return dtype_bytes * (2 * self.hidden_size + q + 2 * kv + 3 * self.intermediate_size)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str = "") -> "Architecture":
        """From a transformers ``config.json`` dict (Llama, Qwen2, Qwen3, Mistral and similar)."""
        cfg = dict(config)
        if "text_config" in cfg and "hidden_size" not in cfg:
            cfg = dict(cfg["text_config"])
        required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
        missing = [k for k in required if cfg.get(k) is None]
        if missing:
            raise ValueError(f"model config {name or ''} lacks {missing}; the planner handles decoder-only "
                             "transformers with Llama/Qwen-style config.json files")
        model_type = str(cfg.get("model_type", ""))
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        head_dim = cfg.get("head_dim") or hidden // heads
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            name=name or str(cfg.get("_name_or_path", model_type)),
            model_type=model_type,
            num_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            vocab_size=int(cfg["vocab_size"]),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=attention_bias and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
        )


# config.json values of the recipe backbones, for planning without network access.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-1.5B-Instruct": dict(
        model_type="qwen2", num_hidden_layers=28, hidden_size=1536, intermediate_size=8960, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen/Qwen2.5-3B-Instruct": dict(
        model_type="qwen2", num_hidden_layers=36, hidden_size=2048, intermediate_size=11008, num_attention_heads=16,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "meta-llama/Llama-3.2-3B-Instruct": dict(
        model_type="llama", num_hidden_layers=28, hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False),
    "Qwen/Qwen3-4B-Instruct-2507": dict(
        model_type="qwen3", num_hidden_layers=36, hidden_size=2560, intermediate_size=9728, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True, attention_bias=False),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(
        model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False),
}


def load_model_config(name_or_path: str) -> tuple[dict[str, Any], str]:
    """``config.json`` of a local folder, an alias, the Hub (when online) or the built-in table.

    Returns the dict and where it came from. Offline (``HF_HUB_OFFLINE=1``) the Hub lookup only
    reads the local cache; a model in none of these places is an error naming them all.
    """
    from .aliases import MODEL_ALIASES, resolve_model_name

    if name_or_path in MODEL_ALIASES:
        name_or_path = resolve_model_name(name_or_path)
    local = os.path.join(os.path.expanduser(name_or_path), "config.json")
    if os.path.isfile(local):
        with open(local, encoding="utf-8") as f:
            return json.load(f), local
    tried = [local]
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name_or_path, "config.json")
        with open(path, encoding="utf-8") as f:
            return json.load(f), f"hub:{name_or_path}"
    except Exception as exc:  # offline, gated or unknown repo: fall back to the built-in table below
        tried.append(f"hub:{name_or_path} ({type(exc).__name__})")
    if name_or_path in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[name_or_path]), "built-in table"
    raise FileNotFoundError(
        f"no config.json for {name_or_path!r}: tried {', '.join(tried)} and the built-in table "
        f"({', '.join(KNOWN_CONFIGS)}). Pass a local model folder or go online.")


@dataclass
class TrainingShape:
    """The recipe settings that size memory (defaults are GRACEConfig's / TRL's)."""

    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    steps_per_generation: int | None = None
    num_generations: int = 8
    max_completion_length: int = DEFAULT_MAX_NEW_TOKENS
    prompt_tokens: int = 128
    activation_checkpointing: bool = True  # formerly gradient_checkpointing (transformers 5.23)
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_tensor_parallel_size: int = 1
    vllm_enable_sleep_mode: bool = False
    use_peft: bool = False
    lora_r: int = 16
    lora_target_modules: Any = None
    embedding_batch_size: int = 16
    dtype: str | None = None  # ModelConfig.dtype: weights as loaded (None/auto → bf16 checkpoints)

    @property
    def sequence_length(self) -> int:
        return self.prompt_tokens + self.max_completion_length

    @property
    def generation_batch(self) -> int:
        """Completions one process generates at once (TRL: micro-batch × steps_per_generation)."""
        return self.per_device_train_batch_size * (self.steps_per_generation or self.gradient_accumulation_steps)

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any], prompt_tokens: int | None = None) -> "TrainingShape":
        from dataclasses import MISSING

        from .config import GRACEConfig

        defaults = {f.name: f.default for f in fields(GRACEConfig) if f.default is not MISSING}
        if recipe.get("activation_checkpointing") is None and "gradient_checkpointing" in recipe:
            recipe = {**recipe, "activation_checkpointing": recipe["gradient_checkpointing"]}  # the old key
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in recipe:
                values[f.name] = recipe[f.name]
            elif f.name in defaults:
                values[f.name] = defaults[f.name]
        if values.get("lora_target_modules") is None:
            values["lora_target_modules"] = list(DEFAULT_LORA_TARGETS)
        if prompt_tokens is not None:
            values["prompt_tokens"] = prompt_tokens
        nullable = ("steps_per_generation", "dtype", "lora_target_modules")
        shape = cls(**{k: v for k, v in values.items() if v is not None or k in nullable})
        if shape.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"vllm_mode must be 'colocate' or 'server', got {shape.vllm_mode!r}")
        return shape


@dataclass
class MemoryEstimate:
    strategy: str
    num_gpus: int
    gpu_memory_bytes: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    generation: int  # HF generate KV cache (+ gathered ZeRO-3 weights) or the embedding pass, whichever is larger
    vllm: int  # memory reserved by a colocated vLLM engine
    overhead: int
    cpu_offload_bytes_per_node: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def model_states(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        """Peak: states + the larger of the training step and the rollout/embedding phase + vLLM + overhead."""
        return self.model_states + max(self.activations, self.generation) + self.vllm + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory_bytes

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(model_states=self.model_states, total=self.total, fits=self.fits)
        return out


def _model_states(arch: Architecture, shape: TrainingShape, strategy: str, n: int) -> tuple[int, int, int, list[str]]:
    """(weights, gradients, optimizer) bytes per GPU, DeepSpeed's accounting for bf16 mixed precision."""
    p = arch.num_parameters()
    notes: list[str] = []
    if shape.use_peft:
        t = arch.lora_parameters(shape.lora_r, shape.lora_target_modules)
        base = 2 * p  # frozen base in bf16
        if strategy == "ddp":
            return base + 4 * t, 4 * t, 8 * t, notes
        if strategy == "zero2":
            return base + 2 * t, (2 + 4) * t // n, (4 + 8) * t // n, notes
        layer_buffer = ZERO3_LAYER_BUFFER_BYTES_PER_PARAM * arch.largest_layer_parameters()
        if strategy == "zero3":
            return (2 * (p + t)) // n + layer_buffer, 4 * t // n, (4 + 8) * t // n, notes
        return layer_buffer, 0, 0, notes  # zero3_offload
    if strategy == "ddp":
        if str(shape.dtype).lower() not in ("float32", "fp32"):
            notes.append("ddp full fine-tuning needs dtype: float32 (bf16 weights make AdamW updates of lr 1e-6 "
                         "round away); the ddp figures assume fp32 weights under bf16 autocast")
        # fp32 weights, fp32 gradients, two fp32 AdamW moments; bf16 only inside autocast.
        return 4 * p, 4 * p, 8 * p, notes
    if strategy == "zero2":
        return 2 * p, (2 + 4) * p // n, (4 + 8) * p // n, notes
    layer_buffer = ZERO3_LAYER_BUFFER_BYTES_PER_PARAM * arch.largest_layer_parameters()
    if strategy == "zero3":
        # ZeRO-3 reduces bf16 gradients through buckets straight into fp32 partitions (DeepSpeed: 18 B/param/N)
        return 2 * p // n + layer_buffer, 4 * p // n, (4 + 8) * p // n, notes
    return layer_buffer, 0, 0, notes  # zero3_offload: parameters, gradients and AdamW live in CPU RAM


def activation_bytes(arch: Architecture, shape: TrainingShape) -> int:
    """Training forward+backward of one micro-batch of (prompt + completion) sequences."""
    tokens = shape.per_device_train_batch_size * shape.sequence_length
    per_layer = arch.saved_activation_bytes_per_token_layer()
    if shape.activation_checkpointing:
        # one bf16 hidden state per layer boundary, plus one layer recomputed during backward
        act = tokens * (arch.num_layers * 2 * arch.hidden_size + per_layer)
    else:
        act = tokens * arch.num_layers * per_layer
    completion_tokens = shape.per_device_train_batch_size * shape.max_completion_length
    lm_head_tile = min(completion_tokens, LM_HEAD_TOKEN_TILE) * min(arch.vocab_size, LM_HEAD_VOCAB_TILE) * 4
    return act + 2 * lm_head_tile


def generation_bytes(arch: Architecture, shape: TrainingShape, strategy: str) -> tuple[int, list[str]]:
    """Rollout/embedding phase on the training GPU (outside any vLLM reservation)."""
    notes: list[str] = []
    seq = shape.sequence_length
    # GRACE's reward pass: backbone forward without grad, embedding_batch_size sequences, layer by layer.
    embed = shape.embedding_batch_size * seq * (2 * arch.hidden_size * 2 + arch.inference_bytes_per_token_layer())
    if shape.use_vllm:
        return embed, notes
    kv = shape.generation_batch * seq * arch.kv_bytes_per_token()
    gathered = 0
    if strategy.startswith("zero3"):
        gathered = 2 * arch.num_parameters()  # ds3_gather_for_generation gathers the full bf16 weights
        notes.append("HF generate under ZeRO-3 gathers all weights (ds3_gather_for_generation)")
    return max(embed, kv + gathered), notes


def vllm_bytes(arch: Architecture, shape: TrainingShape, gpu_memory_bytes: int) -> tuple[int, list[str]]:
    notes: list[str] = []
    if not shape.use_vllm or shape.vllm_mode == "server":
        if shape.use_vllm:
            notes.append("vllm_mode=server: vLLM runs on separate GPUs (not counted here)")
        return 0, notes
    reserved = int(shape.vllm_gpu_memory_utilization * gpu_memory_bytes)
    weights = 2 * arch.num_parameters() // max(1, shape.vllm_tensor_parallel_size)
    kv_full = shape.generation_batch * shape.sequence_length * arch.kv_bytes_per_token()
    kv_full //= max(1, shape.vllm_tensor_parallel_size)
    if weights + kv_full > reserved:
        notes.append(
            f"vLLM share {reserved / GIB:.1f} GiB < weights {weights / GIB:.1f} + KV for the whole generation "
            f"batch {kv_full / GIB:.1f} GiB: vLLM will batch fewer sequences at once (slower) or fail to start if "
            "the weights alone do not fit; raise vllm_gpu_memory_utilization")
    if shape.vllm_enable_sleep_mode:
        notes.append("vllm_enable_sleep_mode offloads vLLM during the training step; the reservation is still "
                     "counted (peak during generation)")
    return reserved, notes


def estimate(arch: Architecture, shape: TrainingShape, strategy: str, num_gpus: int,
             gpu_memory_gib: float = 80.0, gpus_per_node: int | None = None) -> MemoryEstimate:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    gpu_bytes = int(gpu_memory_gib * GIB)
    n = num_gpus if strategy != "ddp" else 1
    weights, grads, optim, notes = _model_states(arch, shape, strategy, n)
    gen, gen_notes = generation_bytes(arch, shape, strategy)
    vllm, vllm_notes = vllm_bytes(arch, shape, gpu_bytes)
    cpu = 0
    if strategy == "zero3_offload":
        trained = (arch.lora_parameters(shape.lora_r, shape.lora_target_modules) if shape.use_peft
                   else arch.num_parameters())
        nodes = max(1, math.ceil(num_gpus / (gpus_per_node or num_gpus)))
        # DeepSpeed: 18 bytes per trained parameter (bf16 + fp32 params, fp32 grads, AdamW) split over nodes.
        cpu = int(18 * trained / nodes)
        if shape.use_peft:
            cpu += int(2 * arch.num_parameters() / nodes)
    return MemoryEstimate(
        strategy=strategy, num_gpus=num_gpus, gpu_memory_bytes=gpu_bytes, weights=weights, gradients=grads,
        optimizer=optim, activations=activation_bytes(arch, shape), generation=gen, vllm=vllm,
        overhead=FRAMEWORK_OVERHEAD_BYTES, cpu_offload_bytes_per_node=cpu, notes=notes + gen_notes + vllm_notes)


def plan(arch: Architecture, shape: TrainingShape, num_gpus: int, gpu_memory_gib: float = 80.0,
         strategies=STRATEGIES, gpus_per_node: int | None = None) -> list[MemoryEstimate]:
    return [estimate(arch, shape, s, num_gpus, gpu_memory_gib, gpus_per_node) for s in strategies]


def recommend(estimates: list[MemoryEstimate], headroom: float = 0.10) -> tuple[MemoryEstimate | None, str]:
    """The fastest strategy (in STRATEGIES order) that fits with some headroom, and a sentence why."""
    for est in sorted(estimates, key=lambda e: STRATEGIES.index(e.strategy)):
        if est.total <= est.gpu_memory_bytes * (1 - headroom):
            return est, (f"use {est.strategy} ({ACCELERATE_CONFIGS[est.strategy]}): "
                         f"~{est.total / GIB:.1f} of {est.gpu_memory_bytes / GIB:.0f} GiB per GPU")
    best = min(estimates, key=lambda e: e.total)
    return None, (f"nothing fits: the smallest is {best.strategy} at ~{best.total / GIB:.1f} GiB per GPU. Lower "
                  "per_device_train_batch_size or max_completion_length, keep activation_checkpointing on, use LoRA "
                  "(use_peft: true), lower vllm_gpu_memory_utilization or use vllm_mode: server, or add GPUs")


def format_table(arch: Architecture, shape: TrainingShape, estimates: list[MemoryEstimate]) -> str:
    p = arch.num_parameters()
    if shape.use_peft:
        lora = arch.lora_parameters(shape.lora_r, shape.lora_target_modules)
        trained = f"LoRA r={shape.lora_r}, {lora / 1e6:.1f}M parameters"
    else:
        trained = "all parameters"
    if not shape.use_vllm:
        vllm = "off"
    elif shape.vllm_mode == "colocate":
        vllm = f"colocate {shape.vllm_gpu_memory_utilization:.2f}"
    else:
        vllm = shape.vllm_mode
    head = [
        f"model: {arch.name} ({arch.model_type}, {p / 1e9:.2f}B parameters, {arch.num_layers} layers, "
        f"hidden {arch.hidden_size}, vocab {arch.vocab_size})",
        f"trained: {trained}",
        f"micro-batch {shape.per_device_train_batch_size} × {shape.sequence_length} tokens "
        f"({shape.prompt_tokens} prompt + {shape.max_completion_length} completion), generation batch "
        f"{shape.generation_batch} per GPU, activation checkpointing "
        f"{'on' if shape.activation_checkpointing else 'off'}, vLLM {vllm}",
        "",
    ]
    cols = ["strategy", "weights", "grads", "optimizer", "activ.", "gen/embed", "vLLM", "overhead", "total",
            "fits", "CPU RAM/node"]
    rows = []
    for e in estimates:
        rows.append([
            e.strategy, *(f"{v / GIB:.1f}" for v in (e.weights, e.gradients, e.optimizer, e.activations, e.generation,
                                                      e.vllm, e.overhead, e.total)),
            "yes" if e.fits else "NO",
            f"{e.cpu_offload_bytes_per_node / GIB:.1f}" if e.cpu_offload_bytes_per_node else "-",
        ])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    gpus = estimates[0].num_gpus if estimates else 0
    gib = estimates[0].gpu_memory_bytes / GIB if estimates else 0
    lines.insert(0, f"per-GPU estimate (GiB) on {gpus} GPU(s) of {gib:.0f} GiB:")
    notes = sorted({n for e in estimates for n in e.notes})
    return "\n".join(head + lines + ([""] + [f"note: {n}" for n in notes] if notes else []))
