r"""Federated learning: FedAvg to DP-FedAvg with secure aggregation, in-process and on Flower.

=================================  =====================================================
partitions (who holds what)        :class:`FederatedDataset`, :func:`cps1988_silos`,
                                   :func:`hospital_sites`, :func:`iid_partition`,
                                   :func:`dirichlet_label_skew`, :func:`quantity_skew`
local training                     :func:`local_update` (reference loop),
                                   :func:`local_updates_vmap` (all clients at once, any model),
                                   :func:`local_updates_bmm` (all at once, MLPs, fastest),
                                   :func:`batch_plans`, :func:`batch_plan`, :func:`make_model`
the server: FedAvg, FedProx,       :class:`FedAvg`, :class:`FedProx`, :class:`FedAdam`,
FedAdam, sampling, simulation      :func:`sample_clients`, :func:`fedavg_aggregate`,
                                   :func:`simulate`
secure aggregation                 :func:`secure_sum`, :class:`SecAggConfig`,
                                   :func:`shamir_share`, :func:`shamir_reconstruct`
DP-FedAvg                          :class:`ClientLevelDP`, :class:`SampleLevelDP`,
                                   :func:`epsilon_per_round`, :func:`clip_updates`
Flower (imported on demand)        :mod:`privlab.federated.flower`: ``task`` (run config, data,
                                   twin), ``client_app``/``server_app`` (Message API),
                                   ``secaggplus`` (SecAgg+), ``simulation`` (Ray),
                                   ``localhost`` (real processes)
=================================  =====================================================

>>> from privlab.config import make_rng, make_torch_generator
>>> data = hospital_sites(rng=make_rng(0))
>>> model = make_model(data.num_features, 16, generator=make_torch_generator(0))
>>> result = simulate(model, data, FedAvg(rounds=2), rng=make_rng(1))
>>> result.history["round"].tolist()
[1, 2]

Used in: chapter 9.
"""

from .dp import ClientLevelDP, SampleLevelDP, client_secret_seeds, clip_updates, epsilon_per_round
from .fedavg import (
    ClientTensors,
    FedAdam,
    FedAvg,
    FedProx,
    FedResult,
    NoPrivacy,
    check_updates,
    draw_base_seed,
    fedavg_aggregate,
    sample_clients,
    simulate,
)
from .local import (
    LOSSES,
    ParamSpec,
    batch_plan,
    batch_plans,
    client_rng,
    local_update,
    local_updates_bmm,
    local_updates_vmap,
    loss_and_accuracy,
    make_model,
    supports_bmm,
)
from .partitions import (
    HOSPITAL_SITES,
    FederatedDataset,
    cps1988_silos,
    dirichlet_label_skew,
    hospital_sites,
    iid_partition,
    quantity_skew,
)
from .secagg import (
    SecAggConfig,
    SecAggDropoutError,
    SecAggResult,
    decode,
    encode,
    secure_sum,
    shamir_reconstruct,
    shamir_share,
)

__all__ = [
    "HOSPITAL_SITES",
    "LOSSES",
    "ClientLevelDP",
    "ClientTensors",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FedResult",
    "FederatedDataset",
    "NoPrivacy",
    "ParamSpec",
    "SampleLevelDP",
    "SecAggConfig",
    "SecAggDropoutError",
    "SecAggResult",
    "batch_plan",
    "batch_plans",
    "check_updates",
    "client_rng",
    "client_secret_seeds",
    "clip_updates",
    "cps1988_silos",
    "decode",
    "dirichlet_label_skew",
    "draw_base_seed",
    "encode",
    "epsilon_per_round",
    "fedavg_aggregate",
    "hospital_sites",
    "iid_partition",
    "local_update",
    "local_updates_bmm",
    "local_updates_vmap",
    "loss_and_accuracy",
    "make_model",
    "quantity_skew",
    "sample_clients",
    "secure_sum",
    "shamir_reconstruct",
    "shamir_share",
    "simulate",
    "supports_bmm",
]
