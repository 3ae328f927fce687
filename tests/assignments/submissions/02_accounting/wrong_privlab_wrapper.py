"""Issue 21: the formulas delegated to privlab.accounting (was full marks)."""
# expect: {"q1_composition": 0.0, "q2_rdp_gaussian": 0.0, "q3_subsampled": 0.0, "q5_replace_one": 0.0}
from privlab import accounting as acc


def advanced_epsilon(epsilon, k, delta_prime):
    return acc.advanced_composition(epsilon=epsilon, k=k, delta_prime=delta_prime)[0]


def smallest_k_where_advanced_wins(epsilon, delta_prime):
    for k in range(1, 10**6 + 1):
        if advanced_epsilon(epsilon, k, delta_prime) < k * epsilon:
            return k
    return None


def gaussian_rdp(sigma, orders, k=1):
    return k * np.asarray(orders, dtype=float) / (2 * sigma**2)


def rdp_to_epsilon(orders, rdp, delta):
    return acc.rdp_to_epsilon(orders=orders, rdp=rdp, delta=delta)[0]


def sampled_gaussian_rdp(q, sigma, alpha):
    return float(acc.subsampled_gaussian_rdp(sample_rate=q, noise_multiplier=sigma, orders=[alpha])[0])


def dpsgd_epsilon(q, sigma, steps, delta):
    orders = list(range(2, 257))
    step = acc.PoissonSampledEvent(sample_rate=q, event=acc.GaussianEvent(noise_multiplier=sigma))
    return acc.RdpAccountant(orders=orders).compose(step, count=steps).get_epsilon(delta)


def replace_one_gaussian_rdp(sigma, orders, k=1):
    return acc.gaussian_rdp(noise_multiplier=sigma / 2, orders=orders) * k


def replace_one_noise_multiplier(sigma):
    return sigma / 2
