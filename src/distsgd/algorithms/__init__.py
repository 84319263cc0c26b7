"""Distributed SGD algorithms, one module each, named after the paper's algorithm."""

from .adpsgd import ADPSGD
from .allreduce_sgd import AllReduceSGD
from .base import ALGORITHMS, Algorithm, Oracle, State, bind, options, sgd_direction
from .choco_sgd import ChocoSGD
from .compressed_sgd import CompressedSGD
from .d2 import D2
from .diff2 import DIFF2
from .divebatch import DiveBatch
from .dp_sgd import DPSGDPrivate
from .dpsgd import DPSGD
from .ef21 import EF21, ef21_stepsize
from .fedavg import FedAvg
from .fedaware import FedAWARE
from .fednova import FedNova
from .local_sgd import LocalSGD
from .powersgd import PowerSGD
from .robust_sgd import RobustGossip, RobustSGD
from .signum import Signum, majority_vote

__all__ = [
    "ALGORITHMS",
    "PowerSGD",
    "bind",
    "options",
    "ADPSGD",
    "D2",
    "DIFF2",
    "ChocoSGD",
    "DiveBatch",
    "DPSGD",
    "DPSGDPrivate",
    "EF21",
    "FedAvg",
    "FedAWARE",
    "FedNova",
    "Algorithm",
    "AllReduceSGD",
    "CompressedSGD",
    "LocalSGD",
    "Oracle",
    "RobustGossip",
    "RobustSGD",
    "Signum",
    "State",
    "ef21_stepsize",
    "majority_vote",
    "sgd_direction",
]
