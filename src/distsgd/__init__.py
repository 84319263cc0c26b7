"""distsgd: distributed SGD algorithms, simulated with many stacked workers or run for real."""

from .algorithms import DPSGD, AllReduceSGD, LocalSGD
from .comm import NetworkModel, SimulatedCommunicator
from .errors import UserError
from .runner import RunResult, train
from .tasks import Task, make_task
from .topology import Topology, make_topology, mixing_matrix, spectral_gap
from .workers import Flat, Workers

__version__ = "0.1.0"

__all__ = [
    "DPSGD",
    "AllReduceSGD",
    "Flat",
    "LocalSGD",
    "NetworkModel",
    "RunResult",
    "SimulatedCommunicator",
    "Task",
    "Topology",
    "UserError",
    "Workers",
    "make_task",
    "make_topology",
    "mixing_matrix",
    "spectral_gap",
    "train",
]
