"""Distributed SGD algorithms, one module each, named after the paper's algorithm."""

from .allreduce_sgd import AllReduceSGD
from .base import Algorithm, Oracle, State, sgd_direction
from .dpsgd import DPSGD
from .local_sgd import LocalSGD

__all__ = ["DPSGD", "Algorithm", "AllReduceSGD", "LocalSGD", "Oracle", "State", "sgd_direction"]
