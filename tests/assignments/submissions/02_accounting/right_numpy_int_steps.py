"""Correct but different (issue 21: was 1/2): max_steps as np.int64 (e.g. from a numpy search)."""
max_steps = np.int64(lo)
