"""distsgd: distributed SGD algorithms, simulated with many stacked workers or run for real.

Two ways in: `simulate(model, train, test, algorithm=..., workers=n)` steps n stacked
workers of any registered algorithm in one process; `DistributedOptimizer(optimizer, model,
algorithm=...)` runs the same algorithm code in an ordinary torchrun training loop.
"""

from . import algorithms, compress, diagnostics, robust
from .adpsgd_real import run_adpsgd
from .algorithms import (
    ADPSGD,
    ALGORITHMS,
    D2,
    DIFF2,
    DPSGD,
    EF21,
    AllReduceSGD,
    ChocoSGD,
    CompressedSGD,
    DiveBatch,
    DPSGDPrivate,
    FedAvg,
    FedAWARE,
    FedNova,
    LocalSGD,
    PowerSGD,
    RobustGossip,
    RobustSGD,
    Signum,
)
from .api import make_algorithm, run_config, simulate
from .comm import NetworkModel, SimulatedCommunicator
from .compress import COMPRESSORS, QSGD, Cast, Identity, Natural, RandK, Sign, TopK, make_compressor
from .dropin import DistributedOptimizer
from .errors import UserError
from .robust import (
    AGGREGATORS,
    BGMD,
    NNM,
    Bucketing,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MajorityVote,
    Mean,
    MultiKrum,
    TrimmedMean,
    make_aggregator,
)
from .runner import RunResult, train
from .tasks import Task, make_task
from .tasks.user import partition
from .topology import Topology, TopologySpec, make_topology, mixing_matrix, spectral_gap
from .workers import Flat, WorkerBatchSampler, Workers

__version__ = "0.1.0"

__all__ = [
    "run_adpsgd",
    "diagnostics",
    "ADPSGD",
    "AGGREGATORS",
    "ALGORITHMS",
    "BGMD",
    "COMPRESSORS",
    "D2",
    "DIFF2",
    "DiveBatch",
    "DPSGD",
    "DPSGDPrivate",
    "EF21",
    "FedAvg",
    "FedAWARE",
    "FedNova",
    "NNM",
    "QSGD",
    "AllReduceSGD",
    "Bucketing",
    "Cast",
    "CenteredClipping",
    "ChocoSGD",
    "CompressedSGD",
    "CoordinateMedian",
    "DistributedOptimizer",
    "Flat",
    "GeometricMedian",
    "Identity",
    "Krum",
    "LocalSGD",
    "MajorityVote",
    "Mean",
    "MultiKrum",
    "Natural",
    "NetworkModel",
    "PowerSGD",
    "RandK",
    "RobustGossip",
    "RobustSGD",
    "RunResult",
    "Sign",
    "Signum",
    "SimulatedCommunicator",
    "Task",
    "TopK",
    "Topology",
    "TopologySpec",
    "TrimmedMean",
    "UserError",
    "WorkerBatchSampler",
    "Workers",
    "algorithms",
    "compress",
    "make_aggregator",
    "make_algorithm",
    "make_compressor",
    "make_task",
    "make_topology",
    "mixing_matrix",
    "partition",
    "robust",
    "run_config",
    "simulate",
    "spectral_gap",
    "train",
]
