"""Issue 21: divides by the realised number of participants instead of the expected qK."""
# expect: {"q3_client_dp": 0.5}


def dp_aggregate(deltas, clip_norm, noise_multiplier, expected_clients, generator):
    norms = deltas.norm(dim=1, keepdim=True)
    total = (deltas * (clip_norm / norms.clamp_min(clip_norm))).sum(0)
    noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * (noise_multiplier * clip_norm)
    return (total + noise) / deltas.shape[0]
