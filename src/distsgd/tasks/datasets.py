"""Datasets generated or shipped offline: MNIST-1D, scikit-learn digits, synthetic regression,
synthetic mobility counts (multivariate time-series forecasting).

Each loader returns a `Dataset`: train and test tensors, the kind of target, and, for the
synthetic sets whose workers differ by construction, the worker each training sample
belongs to (`groups`, used by the "natural" partition).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

DATASETS = ("mnist1d", "digits", "logistic", "least_squares", "mobility")
TIME_FEATURES = 4  # sin/cos of the hour of day and of the day of week, appended to each forecasting window


@dataclass
class Dataset:
    name: str
    x: torch.Tensor  # [N, features] float32
    y: torch.Tensor  # [N] int64 class ids, or float32 targets for regression
    x_test: torch.Tensor
    y_test: torch.Tensor
    kind: str  # "multiclass" | "binary" | "regression"
    num_classes: int  # outputs of the model: classes, or 1 for binary and regression
    groups: torch.Tensor | None = None  # [N] worker id for natural partitions

    @property
    def features(self) -> int:
        return self.x.shape[1]


def _cache_dir() -> Path:
    root = os.environ.get("DISTSGD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distsgd"
    )
    return Path(root)


def mnist1d(num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus 2020) made by the `mnist1d` package's generator, never downloaded.

    The default arguments give the canonical 4000/1000 train/test split; the generated
    arrays are cached on disk (the generator takes seconds), written atomically.
    """
    key = hashlib.sha1(f"mnist1d-{num_samples}-{seed}-v1".encode()).hexdigest()[:12]
    path = _cache_dir() / f"mnist1d-{key}.npz"
    if path.exists():
        z = np.load(path)
        arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        # the generator seeds numpy's and random's global state: keep the caller's
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        arrays = {k: d[k] for k in ("x", "y", "x_test", "y_test")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return Dataset(
        "mnist1d",
        torch.tensor(arrays["x"], dtype=torch.float32),
        torch.tensor(arrays["y"], dtype=torch.int64),
        torch.tensor(arrays["x_test"], dtype=torch.float32),
        torch.tensor(arrays["y_test"], dtype=torch.int64),
        "multiclass",
        10,
    )


def digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8×8 digits (1797 images, shipped with the package), standardized.

    Each pixel is centred and scaled by the mean and standard deviation of the training
    split; a pixel constant there (border pixels, always 0) keeps scale 1, as in
    scikit-learn's StandardScaler, so the test images, where it may not be constant,
    stay on the pixels' own scale (a tiny divisor would blow them up to ~1e6).
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = perm[:n_test], perm[n_test:]
    mu, sd = x[train].mean(0), x[train].std(0)
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))  # zero variance: scale 1
    x = (x - mu) / sd
    return Dataset("digits", x[train], y[train], x[test], y[test], "multiclass", 10)


def synthetic(
    kind: str,
    n_workers: int,
    samples_per_worker: int = 200,
    dim: int = 20,
    heterogeneity: float = 0.0,
    noise: float = 0.1,
    test_samples: int = 2000,
    seed: int = 0,
) -> Dataset:
    """Synthetic logistic or least-squares regression with worker-dependent data.

    Worker i draws features a ~ N(ζ·μ_i, I) and targets from its own model
    w_i = w* + ζ·δ_i, with w*, μ_i, δ_i random unit vectors and ζ = `heterogeneity`:
    ζ = 0 gives i.i.d. workers, larger ζ makes their optima and inputs differ (the knob
    of the "Synthetic(α, β)" family of Li et al., FedProx 2020, folded into one number).
    Logistic: y = 1[a·w_i + noise > 0]; least squares: y = a·w_i + noise.
    The test set mixes all workers equally (the global objective).
    """
    if kind not in ("logistic", "least_squares"):
        raise UserError(f"unknown synthetic kind '{kind}'")
    g = torch.Generator().manual_seed(seed)

    def unit(*shape):
        v = torch.randn(*shape, generator=g)
        return v / v.norm(dim=-1, keepdim=True)

    w_star = unit(dim)
    w = w_star + heterogeneity * unit(n_workers, dim)
    mu = heterogeneity * unit(n_workers, dim)

    def draw(worker_ids: torch.Tensor):
        a = mu[worker_ids] + torch.randn(len(worker_ids), dim, generator=g)
        z = (a * w[worker_ids]).sum(1) + noise * torch.randn(len(worker_ids), generator=g)
        y = (z > 0).float() if kind == "logistic" else z
        return a, y

    groups = torch.arange(n_workers).repeat_interleave(samples_per_worker)
    x, y = draw(groups)
    test_ids = torch.randint(0, n_workers, (test_samples,), generator=g)
    x_test, y_test = draw(test_ids)
    target = "binary" if kind == "logistic" else "regression"
    return Dataset(kind, x, y, x_test, y_test, target, 1, groups=groups)


def mobility_series(regions: int = 20, days: int = 72, steps_per_day: int = 48, seed: int = 0) -> torch.Tensor:
    """Synthetic aggregated mobility counts [days·steps_per_day, regions] (float64): people
    present in each region every 30 minutes, with daily and weekly seasonality.

    Modelled on the call-detail-record aggregates of Arcolezi et al. (Neural Comput. Appl.
    34:13355, 2022: people per 30 min in 6 Paris regions over 72 days). Region r has a size
    s_r (log-uniform in [500, 20 000]) and a residential share w_r ∈ [0, 1]; its mean
    occupancy at hour h of day-of-week k is

        μ_r(h, k) = s_r · [w_r · (1 − 0.7·work(h)) + (1 − w_r) · (0.2 + work(h)) · office(k)] · (1 + 0.1·w_r·weekend(k))

    with work(h) = exp(−((h − 13)/4)²) the daytime bump and office(k) = 0.45 on weekends, 1
    otherwise (business districts empty out on Saturday and Sunday), and the counts are
    Poisson(μ_r) draws."""
    if regions < 1 or days < 2:
        raise UserError(f"mobility needs regions >= 1 and days >= 2, got {regions} and {days}")
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(days * steps_per_day, dtype=torch.float64)
    hour = (t % steps_per_day) / steps_per_day * 24
    weekend = ((t // steps_per_day) % 7 >= 5).to(torch.float64)
    size = torch.exp(torch.empty(regions, dtype=torch.float64).uniform_(math.log(500), math.log(20_000), generator=g))
    resid = torch.rand(regions, generator=g, dtype=torch.float64)
    work = torch.exp(-(((hour - 13) / 4) ** 2)).unsqueeze(1)
    office = (1 - 0.55 * weekend).unsqueeze(1)
    mean = size * (resid * (1 - 0.7 * work) + (1 - resid) * (0.2 + work) * office) * (1 + 0.1 * resid * weekend.unsqueeze(1))
    return torch.poisson(mean, generator=g)


def time_features(t: torch.Tensor, steps_per_day: int) -> torch.Tensor:
    """[len(t), 4]: sin and cos of the hour of day and of the day of week (cyclic encodings)."""
    day = 2 * math.pi * (t % steps_per_day) / steps_per_day
    week = 2 * math.pi * (t % (7 * steps_per_day)) / (7 * steps_per_day)
    return torch.stack([day.sin(), day.cos(), week.sin(), week.cos()], dim=1)


def forecast_windows(
    series: torch.Tensor, lags: int, test_steps: int, steps_per_day: int, train_series: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """One-step-ahead forecasting samples from a [T, R] series: input = the previous `lags`
    values of every region (region-major, [R·lags]) and the target time's features; target =
    the R values at that time. Train targets are the first T − test_steps times, test targets
    the last test_steps. Each region is standardized by the mean and standard deviation of the
    training part of `train_series` (default: `series`), which also supplies the training
    windows: an input perturbation acts on it once, and the test windows read the clean series."""
    train_series = series if train_series is None else train_series
    total, regions = series.shape
    split = total - test_steps
    if lags < 1 or split <= lags:
        raise UserError(f"a forecasting window of {lags} lags needs more than {lags} training steps, got {split}")
    mu = train_series[:split].mean(0)
    sd = train_series[:split].std(0).clamp(min=1e-6)

    def windows(source: torch.Tensor, targets: torch.Tensor):
        z = ((source - mu) / sd).float()
        past = torch.stack([z[targets - lags + k] for k in range(lags)], dim=2)  # [N, R, lags]
        x = torch.cat([past.reshape(len(targets), regions * lags), time_features(targets, steps_per_day).float()], dim=1)
        return x, z[targets]

    x, y = windows(train_series, torch.arange(lags, split))
    x_test, y_test = windows(series, torch.arange(split, total))
    return x, y, x_test, y_test


def mobility(
    regions: int = 20,
    lags: int = 6,
    days: int = 72,
    test_days: int = 7,
    steps_per_day: int = 48,
    seed: int = 0,
    perturb=None,
) -> Dataset:
    """Multivariate forecasting of synthetic mobility counts (`mobility_series`): from the
    last `lags` half-hours of all regions (and the time), predict every region's next count,
    standardized per region. The last `test_days` days are the test set (as Arcolezi et al.:
    65 days to train, 7 to test). `perturb`, if given, maps the raw training series [T, R] to
    a privatized one once, before anything is computed from it (input perturbation,
    `distsgd.privacy.input_perturbation`); the test windows stay clean."""
    series = mobility_series(regions, days, steps_per_day, seed)
    test_steps = test_days * steps_per_day
    train_series = series
    if perturb is not None:
        split = len(series) - test_steps
        train_series = torch.cat([perturb(series[:split]), series[split:]])
    x, y, x_test, y_test = forecast_windows(series, lags, test_steps, steps_per_day, train_series)
    return Dataset("mobility", x, y, x_test, y_test, "regression", regions)
