"""Correct but different (issue 21: was 1/2): max_steps as a float."""
max_steps = float(lo)
