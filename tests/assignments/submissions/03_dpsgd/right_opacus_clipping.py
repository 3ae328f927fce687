"""Correct but different (issue 21: failed q2 at rtol 1e-10): Opacus-style clipping
C / (||g|| + 1e-6): within the stated tolerance (relative 1e-5 for rows of norm >= 0.05)."""


def clip_rows(G, C):
    factors = (C / (G.norm(dim=1, keepdim=True) + 1e-6)).clamp(max=1.0)
    return G * factors

