"""Issue 21: noise calibrated to Delta = b - a instead of (b - a) / n (was 1.33/2)."""
# expect: {"q2_sensitivity": 1.5}


def dp_clipped_mean(values, lower, upper, epsilon, rng):
    values = np.clip(np.asarray(values, dtype=float), lower, upper)
    return laplace_release(float(values.mean()), upper - lower, epsilon, rng)
