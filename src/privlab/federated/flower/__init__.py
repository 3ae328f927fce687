"""privlab's FedAvg experiment on Flower 1.41, in Flower's own app layout.

======================  ==============================================================
``task``                run config, data sets, :func:`experiment`, the in-process twin
                        :func:`privlab_twin`, output I/O (no ``flwr`` import)
``client_app``          the ClientApp (Message API): local training on one partition
``server_app``          the ServerApp: Flower's FedAvg, optionally server-side DP
``secaggplus``          the SecAgg+ ClientApp and ServerApp (Flower's legacy API)
``simulation``          :func:`run_flower_simulation`: Flower's simulation engine (Ray)
``localhost``           :func:`run_localhost`, :class:`LocalFederation`: a SuperLink and
                        SuperNodes as real processes (``privlab localhost``)
``project/``            the Flower App folder ``flwr run`` takes (``project_secagg/``: SecAgg+)
======================  ==============================================================

Importing this package does not import ``flwr``; the app modules do.

Used in: chapter 9.
"""

from .task import (
    DEFAULT_RUN_CONFIG,
    Experiment,
    FlowerRun,
    experiment,
    make_federated_dataset,
    privlab_twin,
    read_flower_outputs,
)

__all__ = [
    "DEFAULT_RUN_CONFIG", "Experiment", "FlowerRun", "LocalFederation", "RayStartupError", "experiment",
    "make_federated_dataset", "privlab_twin", "read_flower_outputs", "run_flower_simulation", "run_localhost",
]

_LAZY = {"LocalFederation": "localhost", "run_localhost": "localhost", "RayStartupError": "simulation",
         "run_flower_simulation": "simulation"}  # fmt: skip


def __getattr__(name: str):
    # the launchers load on first use, so `python -m privlab.federated.flower.localhost` runs its module once
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
