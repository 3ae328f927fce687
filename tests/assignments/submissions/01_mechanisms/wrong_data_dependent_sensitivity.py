"""A red-team read (session 13): the noise scaled to the clipped data's own spread, not to the bounds (not DP; full marks while the graded data reached both bounds)."""
# expect: {"q2_sensitivity": 1.5}

def dp_clipped_mean(values, lower, upper, epsilon, rng):
    values = np.clip(np.asarray(values, dtype=float), lower, upper)
    return laplace_release(float(values.mean()), (values.max() - values.min()) / values.size, epsilon, rng)
