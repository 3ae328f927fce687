"""Issue 21: noise N(0, sigma^2) on the sum, without the clipping norm C (was 3/3)."""
# expect: {"q3_client_dp": 2.0}


def dp_aggregate(deltas, clip_norm, noise_multiplier, expected_clients, generator):
    norms = deltas.norm(dim=1, keepdim=True)
    total = (deltas * (clip_norm / norms.clamp_min(clip_norm))).sum(0)
    noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * noise_multiplier
    return (total + noise) / expected_clients
