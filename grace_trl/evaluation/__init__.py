"""MTEB evaluation: the encoder protocol wrapper, offline task copies, reports and ``grace-trl eval``.

Everything is loaded on first use: the dev-set evaluators that training runs (:mod:`.evaluators`) must not pull
mteb, polars and their import time into a training process.
"""

_LAZY = {
    "LOCAL_TASKS": "tasks", "LocalBanking77Classification": "tasks", "LocalSciFact": "tasks",
    "LocalSTSBenchmark": "tasks", "get_local_task": "tasks", "load_banking77": "loaders", "load_scifact": "loaders",
    "load_sts_benchmark": "loaders", "GRACEMTEBEncoder": "mteb_wrapper",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
