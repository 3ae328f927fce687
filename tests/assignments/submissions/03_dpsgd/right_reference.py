"""The reference solution itself (no overrides): full marks."""
