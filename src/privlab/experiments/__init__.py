"""Experiments the chapters run end to end: reproductions and sweeps built on privlab."""
