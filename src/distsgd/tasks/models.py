"""Small models for the simulated tasks: linear, MLP, a 1D CNN (for MNIST-1D) and a 1D-conv
forecaster (for the mobility time series)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

MODELS = ("linear", "mlp", "cnn1d", "forecast_cnn")
TIME_FEATURES = 4  # as in datasets.TIME_FEATURES: the forecasting input's trailing time features


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


class ConvForecaster(nn.Module):
    """A 1D-conv forecaster: the regions are the channels of a [R, lags] window, two temporal
    convolutions (kernel 3, unpadded: causal within the window) read it, and a linear head on
    their features and the time features predicts each region's change from its last value
    (a persistence skip: ŷ = x_last + head(·), as temporal convolutional forecasters do)."""

    def __init__(self, regions: int, lags: int, channels: int = 32, time_features: int = TIME_FEATURES):
        super().__init__()
        self.regions, self.lags = regions, lags
        k1 = min(3, lags)
        k2 = min(3, lags - k1 + 1)
        self.conv1 = nn.Conv1d(regions, channels, k1)
        self.conv2 = nn.Conv1d(channels, channels, k2)
        width = lags - k1 + 1 - k2 + 1
        self.head = nn.Linear(channels * width + time_features, regions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        past = x[..., : self.regions * self.lags].reshape(*x.shape[:-1], self.regions, self.lags)
        h = torch.relu(self.conv1(past))
        h = torch.relu(self.conv2(h))
        features = torch.cat([h.flatten(-2), x[..., self.regions * self.lags :]], dim=-1)
        return past[..., -1] + self.head(features)


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
    if name == "forecast_cnn":
        lags, rest = divmod(features - TIME_FEATURES, num_outputs)
        if lags < 1 or rest:
            raise UserError("model 'forecast_cnn' reads forecasting windows: use it with dataset 'mobility'")
        return ConvForecaster(num_outputs, lags)
    raise UserError(f"unknown model '{name}' (choose from {', '.join(MODELS)})")
