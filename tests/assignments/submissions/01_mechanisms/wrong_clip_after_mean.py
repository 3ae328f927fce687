"""Issue 21: averages first, then clips the mean (was 1.33/2 with "All test cases passed!")."""
# expect: {"q2_sensitivity": 1.0}


def dp_clipped_mean(values, lower, upper, epsilon, rng):
    values = np.asarray(values, dtype=float)
    mean = float(np.clip(values.mean(), lower, upper))
    return laplace_release(mean, clipped_mean_sensitivity(lower, upper, values.size), epsilon, rng)
