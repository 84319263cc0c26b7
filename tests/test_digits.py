"""The built-in digits dataset: standardization by the training split keeps test data sane."""

import torch

from distsgd.tasks.datasets import digits


def test_standardized_test_features_stay_bounded():
    d = digits()  # the default seed, as make_task("digits", seed=0) uses it
    assert torch.isfinite(d.x).all() and torch.isfinite(d.x_test).all()
    assert d.x.abs().max() < 100 and d.x_test.abs().max() < 100  # was 1e6: 1/1e-6 scale


def test_zero_variance_pixels_keep_scale_one():
    for seed in (0, 1, 2, 3):
        d = digits(seed=seed)
        constant = d.x.std(0) == 0  # constant in the training split
        assert constant.any()  # the digits have always-blank border pixels
        assert (d.x[:, constant] == 0).all()  # centred
        # scale 1: a test value differs from the training constant by at most 16 (pixels are 0..16)
        assert d.x_test[:, constant].abs().max() <= 16
        # the other pixels are standardized
        torch.testing.assert_close(
            d.x[:, ~constant].mean(0), torch.zeros(int((~constant).sum())), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            d.x[:, ~constant].std(0), torch.ones(int((~constant).sum())), atol=1e-4, rtol=0
        )
