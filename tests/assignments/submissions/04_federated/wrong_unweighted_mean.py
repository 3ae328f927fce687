"""Issue 21: the plain mean of the updates, ignoring the sample counts (was 1/2)."""
# expect: {"q1_fedavg": 0.0}


def fedavg(updates, num_samples):
    return {name: sum(u[name] for u in updates) / len(updates) for name in updates[0]}
