"""Issue 21: every function wraps privlab's reference implementation (was 11/11)."""
# expect: {"q1_laplace": 0.0, "q2_sensitivity": 0.0, "q3_gaussian": 0.0, "q4_randomized_response": 0.0, "q5_calibrate": 0.0}
import privlab.gaussian as pg
from privlab.mechanisms import laplace_mechanism, laplace_scale as _scale, randomized_response_estimate
from privlab.sensitivity import bounded_mean, bounded_mean_sensitivity


def laplace_scale(sensitivity, epsilon):
    return _scale(sensitivity=sensitivity, epsilon=epsilon)


def laplace_release(value, sensitivity, epsilon, rng):
    return laplace_mechanism(value, sensitivity=sensitivity, epsilon=epsilon, rng=rng)


def clipped_mean_sensitivity(lower, upper, n):
    return bounded_mean_sensitivity(lower=lower, upper=upper, n=n)


def dp_clipped_mean(values, lower, upper, epsilon, rng):
    value = bounded_mean(values, lower=lower, upper=upper)
    return laplace_release(value, clipped_mean_sensitivity(lower, upper, len(values)), epsilon, rng)


def classic_sigma(sensitivity, epsilon, delta):
    return pg.classic_gaussian_sigma(sensitivity=sensitivity, epsilon=epsilon, delta=delta)


def exact_delta(sigma, sensitivity, epsilon):
    return pg.gaussian_delta(sigma=sigma, sensitivity=sensitivity, epsilon=epsilon)


def rr_estimate(responses, epsilon):
    est = randomized_response_estimate(responses, epsilon=epsilon)
    return est.estimate, est.standard_error


def calibrate_sigma(sensitivity, epsilon, delta):
    from privlab.gaussian import analytic_gaussian_sigma
    return analytic_gaussian_sigma(sensitivity=sensitivity, epsilon=epsilon, delta=delta)
