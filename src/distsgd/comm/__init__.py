"""Communicators: how stacked workers talk (simulated in one process, or torch.distributed)."""

from .base import Communicator, Traffic, payload_bytes
from .network import ComputeClock, NetworkModel
from .simulated import SimulatedCommunicator

__all__ = [
    "Communicator",
    "ComputeClock",
    "NetworkModel",
    "SimulatedCommunicator",
    "Traffic",
    "payload_bytes",
]
