"""Correct but different (issue 21: was 1.5/3): the hint's log-space sum with gammaln and
logsumexp, with no special case for q = 1 (the prompt asks for 0 < q < 1)."""


def sampled_gaussian_rdp(q, sigma, alpha):
    j = np.arange(alpha + 1)
    log_terms = (special.gammaln(alpha + 1) - special.gammaln(j + 1) - special.gammaln(alpha - j + 1)
                 + (alpha - j) * np.log1p(-q) + j * np.log(q) + (j * j - j) / (2 * sigma**2))
    return float(special.logsumexp(log_terms) / (alpha - 1))
