"""Small models for the simulated tasks: linear, MLP and a 1D CNN (for MNIST-1D)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

MODELS = ("linear", "mlp", "cnn1d")


class CNN1d(nn.Module):
    """Three strided 1D convolutions and a linear head, for length-L signals (MNIST-1D: 40)."""

    def __init__(self, length: int, num_outputs: int, channels: int = 32):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        out_len = length
        for _ in range(3):
            out_len = (out_len + 1) // 2
        self.head = nn.Linear(channels * out_len, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(-2)  # [B, 1, L]
        h = torch.relu(self.conv1(h))
        h = torch.relu(self.conv2(h))
        h = torch.relu(self.conv3(h))
        return self.head(h.flatten(-2))


def build_model(name: str, features: int, num_outputs: int, hidden: list[int]) -> nn.Module:
    if name == "linear":
        return nn.Linear(features, num_outputs)
    if name == "mlp":
        layers: list[nn.Module] = []
        width = features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_outputs))
        return nn.Sequential(*layers)
    if name == "cnn1d":
        return CNN1d(features, num_outputs)
    raise UserError(f"unknown model '{name}' (choose from {', '.join(MODELS)})")
