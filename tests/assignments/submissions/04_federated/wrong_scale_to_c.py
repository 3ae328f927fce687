"""Issue 21: every update scaled to norm exactly C, not clipped (was 3/3: no test update was below C)."""
# expect: {"q3_client_dp": 0.5}


def dp_aggregate(deltas, clip_norm, noise_multiplier, expected_clients, generator):
    total = (deltas * (clip_norm / deltas.norm(dim=1, keepdim=True))).sum(0)
    noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * (noise_multiplier * clip_norm)
    return (total + noise) / expected_clients
