"""Distributed SGD algorithms, one module each, named after the paper's algorithm."""

from .allreduce_sgd import AllReduceSGD
from .base import Algorithm, Oracle, State, sgd_direction
from .compressed_sgd import CompressedSGD
from .dpsgd import DPSGD
from .ef21 import EF21, ef21_stepsize
from .local_sgd import LocalSGD
from .signum import Signum, majority_vote

__all__ = [
    "DPSGD",
    "EF21",
    "Algorithm",
    "AllReduceSGD",
    "CompressedSGD",
    "LocalSGD",
    "Oracle",
    "Signum",
    "State",
    "ef21_stepsize",
    "majority_vote",
    "sgd_direction",
]
