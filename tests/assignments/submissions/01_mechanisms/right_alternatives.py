"""Correct but different: the slack split as asked (delta_classic, slack_ratio) computed via
scipy.special.ndtr; Laplace noise as a difference of exponentials; calibration with brentq on a
log scale; an estimator written with the flip probability."""
import scipy.optimize
import scipy.special


def laplace_release(value, sensitivity, epsilon, rng):
    b = laplace_scale(sensitivity, epsilon)
    value = np.asarray(value, dtype=float)
    noise = rng.exponential(b, size=value.shape) - rng.exponential(b, size=value.shape)
    out = value + noise
    return out.item() if out.ndim == 0 else out


def exact_delta(sigma, sensitivity, epsilon):
    a = sensitivity / (2 * sigma)
    c = epsilon * sigma / sensitivity
    return float(scipy.special.ndtr(a - c) - np.exp(epsilon) * scipy.special.ndtr(-a - c))


delta_classic = exact_delta(classic_sigma(1.0, P["epsilon"], P["delta"]), 1.0, P["epsilon"])
slack_ratio = P["delta"] / delta_classic


def calibrate_sigma(sensitivity, epsilon, delta):
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError(f"need epsilon > 0 and 0 < delta < 1, got {epsilon}, {delta}")
    f = lambda log_s: exact_delta(math.exp(log_s), sensitivity, epsilon) - delta
    lo, hi = math.log(sensitivity) - 10, math.log(sensitivity) + 10
    return math.exp(scipy.optimize.brentq(f, lo, hi, xtol=1e-12))


def rr_estimate(responses, epsilon):
    y = np.asarray(responses, dtype=float)
    flip = 1 / (1 + math.exp(epsilon))
    est = (y.mean() - flip) / (1 - 2 * flip)
    return est, math.sqrt(y.mean() * (1 - y.mean()) / y.size) / (1 - 2 * flip)
