"""Issue 21: noise N(0, sigma^2) instead of N(0, sigma^2 C^2) (was 3/3: the public test had C = 1,
the hidden one sigma = 0)."""
# expect: {"q3_noise": 1.0}


def private_gradient(G, C, sigma, expected_batch_size, generator):
    total = clip_rows(G, C).sum(0)
    noise = torch.randn(total.shape, generator=generator, dtype=total.dtype) * sigma
    return (total + noise) / expected_batch_size
