"""vLLM generation for GRACE: the encoder's rationale backend and the trainer's anchor rationales.

Two entry points:

- :class:`VLLMRationaleGenerator` owns a standalone ``vllm.LLM`` and turns prompt token ids into
  rationale token ids. ``GRACEEncoder(backend="vllm")`` uses it; no weights are ever pushed into it.
- :func:`generate_anchor_ids_vllm` writes GRACE's anchor rationales (n = 1, anchor temperature, not
  trained) through the *trainer's* TRL vLLM engine, so that anchors and rollouts come from the same
  weights in both TRL modes (``colocate`` and ``server``).

:func:`cpu_weight_sync_patch` is a CPU-only workaround: vLLM's CPU backend pre-packs linear weights
and drops the original parameters, so TRL's colocate weight sync cannot reach them. See its docstring.

``vllm`` is imported lazily: the rest of grace_trl must work in environments without it.
"""

from __future__ import annotations

import contextlib
import gc
import os
from typing import Any, Iterator, Sequence

# Sampling settings that GRACE's anchors set themselves; a user's ``generation_kwargs`` must not override them.
_ANCHOR_OWNED_KEYS = ("n", "temperature", "max_tokens", "logprobs")


def _require_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without vllm
        raise ImportError(
            "The vLLM backend needs the 'vllm' package (GPU: `pip install vllm`; CPU: see docs/vllm.md and "
            "scripts/setup_vllm_env.sh). It could not be imported: " + str(exc)
        ) from exc
    return vllm


def _on_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _check_prompts(prompt_ids_list: Sequence[Sequence[int]], max_model_len: int | None) -> list[list[int]]:
    if isinstance(prompt_ids_list, (str, bytes)) or not isinstance(prompt_ids_list, Sequence):
        raise TypeError(f"prompt_ids_list must be a list of token-id lists, got {type(prompt_ids_list).__name__}")
    prompts: list[list[int]] = []
    for i, ids in enumerate(prompt_ids_list):
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise TypeError(f"prompt {i}: expected a list of token ids, got {type(ids).__name__}")
        if len(ids) == 0:
            raise ValueError(f"prompt {i}: empty token-id list (every prompt needs at least one token)")
        try:
            row = [int(t) for t in ids]
        except (TypeError, ValueError) as exc:
            raise TypeError(f"prompt {i}: token ids must be integers ({exc})") from exc
        if max_model_len is not None and len(row) >= max_model_len:
            raise ValueError(
                f"prompt {i}: {len(row)} tokens leave no room to generate within max_model_len={max_model_len}; "
                "raise max_model_len or shorten the text"
            )
        prompts.append(row)
    return prompts


def _check_sampling(max_new_tokens: int, temperature: float) -> None:
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the duration of the block (vLLM reads some only at engine start)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class VLLMRationaleGenerator:
    """A vLLM engine that writes rationales for already-tokenized GRACE prompts.

    Implements :class:`grace_trl.generation.RationaleGenerator`, as the HF backend does.

    The engine core runs in this process by default (``in_process=True``): scripts without an
    ``if __name__ == "__main__"`` guard then work (vLLM would otherwise spawn a process that re-imports
    the caller), and no second process holds a copy of the weights. ``enforce_eager=None`` means eager
    on CPU (start-up is several times faster, and CPU has no CUDA graphs to capture) and vLLM's default
    elsewhere. Extra keyword arguments (``dtype``, ``tensor_parallel_size``, ``max_num_seqs`` ...) go to
    ``vllm.LLM`` unchanged.
    """

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool | None = None,
        seed: int = 0,
        in_process: bool = True,
        **llm_kwargs: Any,
    ):
        vllm = _require_vllm()
        if enforce_eager is None:
            enforce_eager = _on_cpu_platform()
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if in_process else {}
        # Decode under the encoder's rules only, like the HF backend: the checkpoint's generation_config.json
        # (repetition penalty, top-k ...) must not become vLLM's default sampling parameters.
        llm_kwargs.setdefault("generation_config", "vllm")
        with _env(**env):
            self.llm = vllm.LLM(
                model=str(model_path),
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                enforce_eager=enforce_eager,
                seed=seed,
                **llm_kwargs,
            )
        self.model_path = str(model_path)
        self.show_progress_bar = True  # GRACEEncoder sets it per call, as for the HF backend
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def generate(
        self,
        prompt_ids_list: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        *,
        show_progress: bool | None = None,
    ) -> list[list[int]]:
        """Token ids of one completion per prompt, in input order; EOS is kept when it was generated.

        ``temperature=0`` is greedy decoding. A completion without EOS hit ``max_new_tokens`` (or the
        context length): callers that penalise truncation can tell by its last token.
        """
        from vllm import SamplingParams

        _check_sampling(max_new_tokens, temperature)
        prompts = _check_prompts(prompt_ids_list, self.max_model_len)
        if not prompts:
            return []
        params = SamplingParams(
            n=1,
            temperature=float(temperature),
            top_p=1.0,
            top_k=0,
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=int(max_new_tokens),
            detokenize=False,  # only ids are needed; skips per-step detokenisation
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in prompts], sampling_params=params,
            use_tqdm=self.show_progress_bar if show_progress is None else show_progress,
        )
        return [list(out.outputs[0].token_ids) for out in outputs]

    def close(self) -> None:
        """Release the engine (weights and KV cache) before the object itself is collected."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()


def generate_anchor_ids_vllm(
    trainer, prompt_ids_list: Sequence[Sequence[int]], temperature: float, max_tokens: int
) -> list[list[int]]:
    """Anchor rationales (one per prompt) from the trainer's TRL vLLM engine, at their own temperature.

    Goes through ``trainer.vllm_generation.generate`` so that every TRL mode keeps working as TRL
    implements it: colocate (incl. tensor-parallel groups and sleep mode) and server (prompts gathered
    to the main process, results broadcast back). Every process must call this, as for rollouts.

    The rollout sampling settings (temperature, max length, logprobs, and the same keys in
    ``generation_kwargs``) are swapped for the anchor's only for this call; top-p/top-k/min-p,
    repetition penalty and structured outputs stay shared with the rollouts. If the engine does not yet
    hold this step's weights, they are synced first, with TRL's own per-step bookkeeping.
    """
    vg = getattr(trainer, "vllm_generation", None)
    if vg is None:
        raise RuntimeError(
            "generate_anchor_ids_vllm needs a trainer built with use_vllm=True (no `vllm_generation` attribute)"
        )
    _check_sampling(max_tokens, temperature)
    prompts = _check_prompts(prompt_ids_list, None)

    if trainer.state.global_step != getattr(trainer, "_last_loaded_step", None):
        from trl.extras.profiling import profiling_context

        with profiling_context(trainer, "sync_weights"):
            vg.sync_weights()
        trainer._last_loaded_step = trainer.state.global_step

    # TRL slices results by `process_index * len(prompts)` (server mode) and by the local count within a
    # tensor-parallel group (colocate), i.e. it assumes every process sends the same number of prompts.
    # Pad each process to the largest count with copies of a real prompt and drop the extras afterwards.
    from accelerate.utils import gather_object

    counts = gather_object([len(prompts)])
    target = max(counts)
    if target == 0:
        return []
    if prompts:
        filler = prompts[0]
    else:
        tok = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        filler = [int(tok.eos_token_id if tok.pad_token_id is None else tok.pad_token_id)]
    padded = prompts + [filler] * (target - len(prompts))

    saved = (vg.temperature, vg.max_completion_length, vg.logprobs, vg.generation_kwargs)
    try:
        vg.temperature = float(temperature)
        vg.max_completion_length = int(max_tokens)
        vg.logprobs = None  # anchors are not trained: no logprobs to compute or ship
        vg.generation_kwargs = {k: v for k, v in (saved[3] or {}).items() if k not in _ANCHOR_OWNED_KEYS}
        from trl.extras.profiling import profiling_context

        _, completion_ids, _, _ = vg.generate(
            prompts=padded, images=None, num_generations=1,
            profiler=profiling_context(trainer, "vLLM.generate_anchors"),
        )
    finally:
        vg.temperature, vg.max_completion_length, vg.logprobs, vg.generation_kwargs = saved
    if len(completion_ids) != len(padded):
        raise RuntimeError(f"vLLM returned {len(completion_ids)} anchor completions for {len(padded)} prompts")
    return [list(ids) for ids in completion_ids[: len(prompts)]]


def _keep_plain_linear_weights(layer, remove_weight: bool) -> None:
    """Replacement for vLLM's CPU GEMM dispatch: compute with the layer's own weight parameter."""
    import torch.nn.functional as F

    layer.cpu_linear = F.linear


@contextlib.contextmanager
def cpu_weight_sync_patch() -> Iterator[bool]:
    """CPU only: keep vLLM's linear weights as ordinary parameters so weight sync takes effect.

    After loading a checkpoint, vLLM's CPU backend (0.32) hands every linear layer to a packed GEMM
    kernel (oneDNN / sgl) and replaces ``layer.weight`` with an empty parameter that has no
    ``weight_loader``. TRL's colocate sync (``model.load_weights``) then fails with
    ``'Parameter' object has no attribute 'weight_loader'``, and the embedding/LM head, which keeps its
    weight, would compute from a stale packed copy. Inside this block, engines that are *created* use
    ``torch.nn.functional.linear`` on the live parameters instead, so ``load_weights`` updates what the
    model computes with. It costs some CPU GEMM speed, so use it only for engines that receive weights
    (TRL colocate on CPU), not for the encoder's generation-only engine.

    The engine must be built in this process (TRL colocate's ``external_launcher``, or
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``). Yields whether the patch was applied: a no-op off CPU.
    """
    _require_vllm()
    if not _on_cpu_platform():
        yield False
        return
    import vllm.model_executor.layers.utils as layer_utils

    # linear.py and vocab_parallel_embedding.py import this function at call time, so swapping the
    # module attribute reaches them.
    original = layer_utils.dispatch_cpu_unquantized_gemm
    layer_utils.dispatch_cpu_unquantized_gemm = _keep_plain_linear_weights
    try:
        yield True
    finally:
        layer_utils.dispatch_cpu_unquantized_gemm = original
