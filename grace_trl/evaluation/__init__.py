"""MTEB evaluation: the encoder protocol wrapper, offline task copies, reports and ``grace-trl eval``."""

from .tasks import (  # noqa: F401
    LOCAL_TASKS,
    LocalBanking77Classification,
    LocalSciFact,
    LocalSTSBenchmark,
    get_local_task,
    load_banking77,
    load_scifact,
    load_sts_benchmark,
)

__all__ = ["LOCAL_TASKS", "LocalBanking77Classification", "LocalSciFact", "LocalSTSBenchmark", "get_local_task",
           "load_banking77", "load_scifact", "load_sts_benchmark", "GRACEMTEBEncoder"]


def __getattr__(name):  # the wrapper imports torch/transformers; load it on first use
    if name == "GRACEMTEBEncoder":
        from .mteb_wrapper import GRACEMTEBEncoder

        return GRACEMTEBEncoder
    raise AttributeError(name)
