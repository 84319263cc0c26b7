"""The mobility forecasting task, its 1D-conv forecaster, and input perturbation."""

from __future__ import annotations

import math

import pytest
import torch
from dp_accounting.gaussian_mechanism import get_sigma_gaussian

import distsgd
from distsgd import rng
from distsgd.algorithms.allreduce_sgd import AllReduceSGD
from distsgd.algorithms.dp_sgd import DPSGDPrivate
from distsgd.errors import UserError
from distsgd.privacy import input_perturbation as ip
from distsgd.tasks import datasets as ds
from distsgd.tasks.task import make_task


def test_counts_have_daily_and_weekly_seasonality():
    s = ds.mobility_series(regions=12, days=28, seed=1)
    assert s.shape == (28 * 48, 12) and bool((s >= 0).all()) and torch.equal(s, s.round())
    by_hour = s.reshape(28, 48, 12).mean(0)  # [half-hour, region]
    assert float((by_hour.max(0).values / by_hour.min(0).values).max()) > 1.5  # a daily cycle
    days = s.reshape(4, 7, 48, 12).sum(2)  # [week, day of week, region]
    weekday, weekend = days[:, :5].mean((0, 1)), days[:, 5:].mean((0, 1))
    assert float((weekday / weekend).max()) > 1.2  # business districts empty out at weekends
    assert torch.equal(s, ds.mobility_series(regions=12, days=28, seed=1))


def test_windows_hold_the_last_lags_and_the_next_values():
    lags, regions = 4, 5
    data = ds.mobility(regions=regions, lags=lags, days=20, test_days=3, seed=2)
    s = ds.mobility_series(regions, 20, seed=2)
    split = 17 * 48
    mu, sd = s[:split].mean(0), s[:split].std(0)
    z = ((s - mu) / sd).float()
    t = 100  # the sample whose target is time lags + t
    past = data.x[t, : regions * lags].reshape(regions, lags)
    torch.testing.assert_close(past, z[t : t + lags].T)
    torch.testing.assert_close(data.y[t], z[t + lags])
    assert len(data.y) == split - lags and len(data.y_test) == 3 * 48
    torch.testing.assert_close(data.y_test[0], z[split])
    assert data.x.shape[1] == regions * lags + ds.TIME_FEATURES


def test_the_conv_forecaster_beats_persistence():
    task = make_task("mobility", n_workers=4, model="forecast_cnn", batch_size=32, regions=10, seed=0)
    data = task.dataset
    last = data.x_test[:, : 10 * 6].reshape(-1, 10, 6)[..., -1]
    persistence = float(((last - data.y_test) ** 2).mean())
    res = distsgd.train(task, AllReduceSGD(lr=0.05, momentum=0.9), steps=200, eval_every=200)
    assert res.metrics[-1]["test_loss"] < 0.9 * persistence


def test_dp_sgd_trains_the_forecaster_with_per_sample_gradients():
    task = make_task("mobility", n_workers=4, model="forecast_cnn", batch_size=16, regions=6, seed=0)
    res = distsgd.train(task, DPSGDPrivate(lr=0.05, noise_multiplier=1.0, max_grad_norm=1.0, batch_size=16), steps=5, eval_every=5)
    assert math.isfinite(res.metrics[-1]["test_loss"]) and res.metrics[-1]["epsilon"] > 0


def test_laplace_and_gaussian_noise_have_the_calibrated_scale():
    zeros = torch.zeros(400_000, dtype=torch.float64)
    lap = ip.perturb(zeros, 0.5, "laplace", generator=torch.Generator().manual_seed(0))
    b = 1 / 0.5  # Δ₁/ε
    assert abs(float(lap.mean())) < 5 * math.sqrt(2) * b / math.sqrt(len(zeros))
    assert abs(float(lap.var()) / (2 * b * b) - 1) < 0.02
    assert abs(float(lap.abs().mean()) / b - 1) < 0.01  # E|Lap(b)| = b
    gauss = ip.perturb(zeros, 1.0, "gaussian", delta=1e-5, sensitivity=2.0, generator=torch.Generator().manual_seed(1))
    sigma = 2.0 * get_sigma_gaussian(1.0, 1e-5)
    assert ip.noise_scale(1.0, "gaussian", delta=1e-5, sensitivity=2.0) == sigma
    assert abs(float(gauss.std()) / sigma - 1) < 0.01


def test_input_perturbation_noises_the_training_series_once_and_leaves_the_test_series_clean():
    clean = make_task("mobility", n_workers=2, regions=4, batch_size=8, seed=3)
    noisy = make_task("mobility", n_workers=2, regions=4, batch_size=8, seed=3, input_epsilon=0.2)
    s = ds.mobility_series(4, 72, seed=3)
    split = 65 * 48
    noise_once = ip.perturb(s[:split], 0.2, "laplace", generator=rng.generator(3, 0, "input_noise"))
    x, y, x_test, y_test = ds.forecast_windows(s, 6, 7 * 48, 48, torch.cat([noise_once, s[split:]]))
    assert torch.equal(noisy.dataset.x, x) and torch.equal(noisy.dataset.y_test, y_test)
    assert not torch.equal(noisy.dataset.x, clean.dataset.x)
    assert noisy.description["input_epsilon"] == 0.2


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"dataset": "mobility", "input_epsilon": 0.0}, "epsilon"),
        ({"dataset": "mobility", "input_epsilon": -1.0}, "epsilon"),
        ({"dataset": "mobility", "input_epsilon": 1.0, "input_mechanism": "gaussian"}, "delta"),
        ({"dataset": "mobility", "input_epsilon": 1.0, "input_mechanism": "exponential"}, "mechanism"),
        ({"dataset": "digits", "input_epsilon": 1.0}, "mobility"),
        ({"dataset": "digits", "model": "forecast_cnn"}, "forecast_cnn"),
        ({"dataset": "mobility", "lags": 4000}, "lags"),
    ],
)
def test_bad_forecast_options_are_one_line(kw, match):
    with pytest.raises(UserError, match=match) as e:
        make_task(n_workers=2, batch_size=8, **kw)
    assert "\n" not in str(e.value) and e.value.exit_code == 2
