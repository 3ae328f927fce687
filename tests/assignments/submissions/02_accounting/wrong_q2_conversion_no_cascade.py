"""Issue 21 (cascade): Mironov's original conversion eps = rho + ln(1/delta)/(alpha - 1) is looser
than the one asked in question 2 and fails both of its tests; question 3 uses this function but is
graded with the reference conversion, so it keeps full marks (was: q3 lost points too)."""
# expect: {"q2_rdp_gaussian": 0.0}


def rdp_to_epsilon(orders, rdp, delta):
    a, r = np.asarray(orders, dtype=float), np.asarray(rdp, dtype=float)
    return float(np.min(r + math.log(1 / delta) / (a - 1)))
