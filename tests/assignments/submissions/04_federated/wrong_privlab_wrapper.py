"""Issue 21: privlab.federated does the work (was full marks)."""
# expect: {"q1_fedavg": 0.0, "q3_client_dp": 0.0}
from privlab.federated import clip_updates, fedavg_aggregate


def fedavg(updates, num_samples):
    return fedavg_aggregate(updates, num_samples)


def dp_aggregate(deltas, clip_norm, noise_multiplier, expected_clients, generator):
    total = clip_updates(deltas, clip_norm=clip_norm).sum(0)
    noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * (noise_multiplier * clip_norm)
    return (total + noise) / expected_clients
