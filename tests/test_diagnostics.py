"""Loss-landscape diagnostics: exact on a quadratic, against a dense Hessian and PyHessian."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from distsgd.diagnostics import (
    Diagnostic,
    average_direction_sharpness,
    consensus_covariance_factor,
    consensus_distance,
    empirical_loss,
    gradient_diversity,
    hessian_top_eigenvalue,
    hessian_trace,
    measure,
    parse,
    sample_gradient_diversity,
    sharpness,
)
from distsgd.errors import UserError
from distsgd.workers import Flat

seeds = st.integers(0, 2**31 - 1)


def half_squared(out, y):
    return 0.5 * (out.squeeze(-1) - y).pow(2).mean()


def quadratic(n=300, d=12, seed=0, scales=None):
    """A linear model under half squared error: L(w) = (1/2N)‖Xw − y‖², H = XᵀX/N exactly."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.3, 2.5, d) if scales is None else scales
    X = torch.randn(n, d, generator=g) * scales
    y = torch.randn(n, generator=g)
    model = nn.Linear(d, 1, bias=False)
    f = empirical_loss(model, (X, y), half_squared, chunk=64)  # several chunks, one ragged
    H = (X.double().T @ X.double()) / n
    return f, H, X, y


def gradient(X, y, w):
    return X.double().T @ (X.double() @ w.double() - y.double()) / len(y)


# -- the quadratic: every estimate against its closed form --------------------------------------


def test_hessian_vector_product_is_exact_on_a_quadratic():
    f, H, *_ = quadratic()
    v = torch.randn(3, f.d, generator=torch.Generator().manual_seed(1))
    w = torch.randn(f.d)
    assert torch.allclose(f.hvp(w, v).double(), v.double() @ H, rtol=1e-4, atol=1e-5)
    assert torch.allclose(f.hvp(w, v[0]).double(), H @ v[0].double(), rtol=1e-4, atol=1e-5)


def test_top_eigenvalues_match_eigvalsh():
    # separated top eigenvalues (about 9, 5.8, 3.6, then 1): power iteration with deflation
    # converges in tens of iterations, not the thousands a crowded spectrum needs
    f, H, *_ = quadratic(scales=torch.tensor([3.0, 2.4, 1.9] + [1.0] * 9))
    exact = torch.linalg.eigvalsh(H).flip(0)
    top = hessian_top_eigenvalue(f, k=3, tol=1e-9, max_iter=2000)
    assert torch.allclose(top.eigenvalues, exact[:3], rtol=1e-4)
    # the eigenvectors are unit, orthogonal, and satisfy Hv = λv
    V = top.eigenvectors.double()
    assert torch.allclose(V @ V.T, torch.eye(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(V @ H, top.eigenvalues[:, None] * V, atol=1e-3)


def test_top_eigenvalue_with_pyhessians_defaults_is_within_its_stopping_rule():
    """tol 1e-3 on the change of λ: with λ₂/λ₁ = r the Rayleigh quotient's error is at most
    about tol/(1 − r²) relative when the rule fires; here r² ≈ 0.54, so 1% is generous."""
    scales = torch.tensor([3.0, 2.2] + [1.0] * 10)
    f, H, *_ = quadratic(scales=scales)
    exact = torch.linalg.eigvalsh(H)
    top = hessian_top_eigenvalue(f)
    assert int(top.iterations[0]) < 100
    assert abs(float(top.eigenvalues[0]) - float(exact[-1])) <= 0.01 * float(exact[-1])
    again = hessian_top_eigenvalue(f)  # seeded: the same start, the same answer
    assert torch.equal(top.eigenvalues, again.eigenvalues)


def test_hutchinson_trace_within_its_standard_error():
    f, H, *_ = quadratic()
    est = hessian_trace(f, samples=400, seed=3)
    exact = float(torch.trace(H))
    assert abs(float(est.mean) - exact) <= 4 * float(est.stderr)
    # the per-probe variance of zᵀHz with Rademacher z is 2 Σ_{i≠j} H_ij²
    var = 2 * float(H.pow(2).sum() - H.diagonal().pow(2).sum())
    assert float(est.stderr) == pytest.approx(math.sqrt(var / 400), rel=0.25)
    assert int(est.samples) == 400


def test_hutchinson_is_exact_from_one_probe_on_a_diagonal_hessian():
    n, d = 64, 10
    Q, _ = torch.linalg.qr(torch.randn(n, d, generator=torch.Generator().manual_seed(0)))
    X = Q * math.sqrt(n) * torch.arange(1.0, d + 1).sqrt()  # XᵀX/N = diag(1..10)
    f = empirical_loss(nn.Linear(d, 1, bias=False), (X, torch.zeros(n)), half_squared)
    est = hessian_trace(f, samples=1)
    assert float(est.mean) == pytest.approx(55.0, rel=1e-4)
    assert math.isinf(float(est.stderr))


def test_trace_stopping_rule_is_pyhessians_and_independent_of_batching():
    f, H, *_ = quadratic()
    a, b = hessian_trace(f, batch=1), hessian_trace(f, batch=7)
    assert int(a.samples) == int(b.samples)  # the same probes, in the same order
    assert float(a.mean) == pytest.approx(float(b.mean), rel=1e-6)
    assert 2 <= int(a.samples) <= 100
    assert abs(float(a.mean) - float(torch.trace(H))) <= 5 * float(a.stderr)


def test_sam_sharpness_first_order_has_the_closed_form():
    f, H, X, y = quadratic()
    w = torch.randn(f.d, generator=torch.Generator().manual_seed(2))
    g = gradient(X, y, w)
    ghat = g / g.norm()
    for rho in (0.01, 0.05, 0.5):
        expected = rho * g.norm() + 0.5 * rho**2 * (ghat @ H @ ghat)
        assert float(sharpness(f, w, rho)) == pytest.approx(float(expected), rel=1e-4)


def test_sam_sharpness_ascent_steps_find_the_top_eigendirection():
    """Near a minimum (tiny g) of a quadratic the max over the ρ-ball is about ½ρ²λ_max;
    the first-order step along g misses it, projected ascent finds it, and no value can
    exceed ρ‖g‖ + ½ρ²λ_max."""
    f, H, X, y = quadratic()
    wstar = torch.linalg.solve(H, X.double().T @ y.double() / len(y)).float()
    w = wstar + 1e-3 * torch.randn(f.d, generator=torch.Generator().manual_seed(5))
    g, lmax, rho = gradient(X, y, w), float(torch.linalg.eigvalsh(H)[-1]), 1.0
    bound = rho * float(g.norm()) + 0.5 * rho**2 * lmax
    first, ascent = float(sharpness(f, w, rho)), float(sharpness(f, w, rho, steps=40))
    assert first < 0.8 * 0.5 * rho**2 * lmax
    assert 0.97 * 0.5 * rho**2 * lmax <= ascent <= bound * (1 + 1e-4)


def test_average_direction_sharpness_of_a_quadratic_is_half_trace_h_xi():
    f, H, *_ = quadratic()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(f.d, generator=g) + 0.3 * torch.randn(6, f.d, generator=g)
    D = consensus_covariance_factor(x)
    Xi = D.T @ D
    xbar = x.double().mean(0)
    assert torch.allclose(Xi, (x.double() - xbar).T @ (x.double() - xbar) / 6)
    exact = 0.5 * float(torch.trace(H @ Xi))
    second = average_direction_sharpness(f, x, method="second_order")
    assert float(second.mean) == pytest.approx(exact, rel=1e-4)
    mc = average_direction_sharpness(f, x, samples=400, seed=1)
    assert abs(float(mc.mean) - exact) <= 4 * float(mc.stderr)
    assert float(mc.stderr) < 0.2 * exact
    same = x[:1].repeat(4, 1)  # no spread, no regularization
    assert float(average_direction_sharpness(f, same).mean) == 0.0


def test_per_worker_gives_one_value_per_row_and_the_default_is_the_average():
    f, H, *_ = quadratic()
    x = torch.randn(5, f.d, generator=torch.Generator().manual_seed(6))
    per = sharpness(f, x, 0.1, per_worker=True)
    assert per.shape == (5,)
    for i in range(5):
        assert float(per[i]) == pytest.approx(float(sharpness(f, x[i], 0.1)), rel=1e-6)
    assert float(sharpness(f, x, 0.1)) == pytest.approx(float(sharpness(f, x.mean(0), 0.1)), rel=1e-6)
    top = hessian_top_eigenvalue(f, x, k=2, per_worker=True)
    assert top.eigenvalues.shape == (5, 2) and top.eigenvectors.shape == (5, 2, f.d)
    tr = hessian_trace(f, x, samples=4, per_worker=True)
    assert tr.mean.shape == tr.stderr.shape == tr.samples.shape == (5,)
    assert sample_gradient_diversity(f, x, per_worker=True).shape == (5,)


def test_consensus_distance_matches_the_communicator():
    from distsgd.comm.simulated import SimulatedCommunicator

    x = torch.randn(7, 30, generator=torch.Generator().manual_seed(0))
    assert float(consensus_distance(x)) == pytest.approx(SimulatedCommunicator(7).consensus_distance(x), rel=1e-12)
    assert float(consensus_distance(x[:1].repeat(3, 1))) == 0.0
    D = consensus_covariance_factor(x)
    assert float(torch.trace(D.T @ D)) == pytest.approx(float(consensus_distance(x)), rel=1e-10)


# -- gradient diversity -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20), st.integers(1, 30), seeds, st.floats(1e-3, 1e3))
def test_diversity_is_at_least_one_over_n_and_scale_and_order_invariant(n, d, seed, scale):
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    delta = float(gradient_diversity(g))
    assert delta >= 1 / n * (1 - 1e-9)
    # mean- or sum-reduced gradients (any common scale) and any order give the same Δ
    assert float(gradient_diversity(scale * g)) == pytest.approx(delta, rel=1e-9)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    assert float(gradient_diversity(g[perm])) == pytest.approx(delta, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 16), st.integers(1, 20), seeds)
def test_identical_gradients_give_one_over_n_and_orthogonal_ones_give_one(n, d, seed):
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert float(gradient_diversity(v.repeat(n, 1))) == pytest.approx(1 / n, rel=1e-9)
    k = min(n, d)
    Q, _ = torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64))
    assert float(gradient_diversity(3.0 * Q.T)) == pytest.approx(1.0, rel=1e-9)


def test_diversity_known_values_and_batching():
    assert float(gradient_diversity(torch.ones(8, 5))) == pytest.approx(0.125)
    assert math.isinf(float(gradient_diversity(torch.tensor([[1.0, 2.0], [-1.0, -2.0]]))))
    g = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(0))
    batched = gradient_diversity(g)
    assert batched.shape == (3,)
    assert all(float(batched[i]) == pytest.approx(float(gradient_diversity(g[i]))) for i in range(3))


def test_sample_gradient_diversity_of_a_linear_model():
    f, H, X, y = quadratic(n=150)
    w = torch.randn(f.d, generator=torch.Generator().manual_seed(8))
    r = X.double() @ w.double() - y.double()
    per_sample = r[:, None] * X.double()  # ∇ of ½(x_iᵀw − y_i)²
    assert float(sample_gradient_diversity(f, w, chunk=16)) == pytest.approx(
        float(gradient_diversity(per_sample)), rel=1e-4
    )


# -- a small network: a dense Hessian and PyHessian -------------------------------------------


def small_mlp():
    """451 parameters, trained a little; λ₂/λ₁ ≈ 0.49 at this point (a clear top eigenvalue)."""
    torch.manual_seed(3)
    X = torch.randn(256, 10) * torch.tensor([4.0] + [1.0] * 9)
    y = (X[:, :3].sum(1) > 0).long() + (X[:, 3] > 1).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    for _ in range(100):
        model.zero_grad()
        F.cross_entropy(model(X), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    model.zero_grad()
    return model, X, y


def dense_hessian(f, w):
    (xb, yb), = f.chunks
    return torch.func.hessian(lambda p: f.loss(f.forward(p, xb), yb))(w).double()


def test_network_against_the_dense_hessian():
    model, X, y = small_mlp()
    f = empirical_loss(model, (X, y), F.cross_entropy)
    H = dense_hessian(f, f.w0)
    e = torch.linalg.eigvalsh(H)
    top = hessian_top_eigenvalue(f, tol=1e-7, max_iter=1000)
    assert float(top.eigenvalues[0]) == pytest.approx(float(e[-1]), rel=1e-3)
    est = hessian_trace(f, samples=300)
    assert abs(float(est.mean) - float(torch.trace(H))) <= 4 * float(est.stderr)
    v = torch.randn(f.d, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(f.hvp(f.w0, v).double(), H @ v.double(), rtol=1e-4, atol=1e-5)


def test_network_against_pyhessian():
    pyhessian = pytest.importorskip("pyhessian")
    model, X, y = small_mlp()
    f = empirical_loss(model, (X, y), F.cross_entropy)
    exact = torch.linalg.eigvalsh(dense_hessian(f, f.w0))
    torch.manual_seed(0)  # PyHessian draws from the global generator
    h = pyhessian.hessian(model, F.cross_entropy, data=(X, y), cuda=False)
    (theirs,), _ = h.eigenvalues()
    probes = torch.tensor(h.trace(), dtype=torch.float64)
    ours = float(hessian_top_eigenvalue(f).eigenvalues[0])
    # both use maxIter 100, tol 1e-3 on the change of λ: with λ₂/λ₁ ≈ 0.49 each stops within
    # ~0.2% of λ_max (checked against the dense Hessian), so they agree to 1%
    assert ours == pytest.approx(float(exact[-1]), rel=0.01)
    assert theirs == pytest.approx(float(exact[-1]), rel=0.01)
    assert ours == pytest.approx(theirs, rel=0.01)
    # Hutchinson: both means are noisy; they agree within 4 combined standard errors
    est = hessian_trace(f)
    se_theirs = float(probes.std() / math.sqrt(len(probes)))
    assert abs(float(est.mean) - float(probes.mean())) <= 4 * math.hypot(float(est.stderr), se_theirs)


# -- measure, parse and bad input ------------------------------------------------------------


def test_parse_names_and_arguments():
    assert parse("hessian_top, hessian_trace,sharpness:0.1") == (
        Diagnostic("hessian_top"),
        Diagnostic("hessian_trace"),
        Diagnostic("sharpness", 0.1),
    )
    assert parse(["hessian_top:3", "avg_sharpness"]) == (Diagnostic("hessian_top", 3.0), Diagnostic("avg_sharpness"))


@pytest.mark.parametrize(
    "spec, words",
    [
        ("hessian_top,flatness", "unknown diagnostic 'flatness'"),
        ("sharpness:0", "rho must be > 0"),
        ("sharpness:-1", "rho must be > 0"),
        ("sharpness:big", "must be a number"),
        ("hessian_top:1.5", "whole number"),
        ("hessian_trace:3", "takes no argument"),
    ],
)
def test_bad_specs_are_one_line(spec, words):
    with pytest.raises(UserError, match=words) as e:
        parse(spec)
    assert "\n" not in str(e.value)


def test_bad_input_is_one_line():
    f, *_ = quadratic()
    cases = [
        lambda: empirical_loss(nn.Linear(3, 1), (torch.randn(4, 3), torch.randn(4))),  # no loss
        lambda: sharpness(f, torch.zeros(f.d), 0.0),
        lambda: sharpness(f, torch.zeros(f.d), -0.1),
        lambda: hessian_trace(f, torch.zeros(f.d + 1)),
        lambda: average_direction_sharpness(f, torch.zeros(f.d)),
        lambda: empirical_loss(nn.Linear(3, 1), [1, 2, 3], half_squared),
        lambda: measure("hessian_top,nope", (torch.randn(4, 3), torch.randn(4)), nn.Linear(3, 1), torch.zeros(2, 4)),
    ]
    for case in cases:
        with pytest.raises(UserError) as e:
            case()
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="has no loss"):
        empirical_loss(nn.Linear(3, 1), (torch.randn(4, 3), torch.randn(4)))


def test_measure_after_a_decentralized_run(digits_task):
    """What the runner calls at an evaluation: the stacked x, the workers' module, flat and
    averaged buffers; the values agree with the functions called one by one."""
    from distsgd.algorithms import DPSGD
    from distsgd.runner import train

    r = train(digits_task, DPSGD(lr=0.2, topology="ring"), steps=5, eval_every=5)
    w, x = r.workers, r.state["x"]
    buffers = w.mean_buffers(r.comm)
    row = measure(
        "hessian_top,hessian_trace,sharpness:0.05,avg_sharpness,gradient_diversity,consensus_distance",
        digits_task,
        w.model,
        x,
        w.flat,
        buffers=buffers,
        max_samples=300,
    )
    assert set(row) == {
        "hessian_top",
        "hessian_trace",
        "hessian_trace_se",
        "sharpness_0.05",
        "avg_sharpness",
        "avg_sharpness_se",
        "gradient_diversity",
        "consensus_distance",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in row.values())
    f = empirical_loss(w.model, digits_task, flat=w.flat, buffers=buffers, max_samples=300)
    assert row["hessian_top"] == float(hessian_top_eigenvalue(f, x).eigenvalues[0])
    assert row["sharpness_0.05"] == pytest.approx(float(sharpness(f, x.mean(0), 0.05)), rel=1e-6)
    assert row["consensus_distance"] == pytest.approx(r.final["consensus_distance"], rel=1e-9)
    assert row["consensus_distance"] > 0 and row["avg_sharpness_se"] > 0
    # the Workers.outputs-style function of w gives the same objective
    g = empirical_loss(lambda p: w.outputs(p, buffers), digits_task, flat=w.flat, max_samples=300)
    xbar = x.mean(0)
    assert float(g(xbar)) == pytest.approx(float(f(xbar)), rel=1e-6)
    per = measure("hessian_top:2,sharpness", digits_task, w.model, x, w.flat, max_samples=300, per_worker=True)
    assert len(per["hessian_top"]) == len(per["hessian_top_2"]) == len(per["sharpness_0.05"]) == digits_task.n


def test_module_parameters_by_default():
    model = nn.Linear(4, 1)
    data = (torch.randn(32, 4, generator=torch.Generator().manual_seed(0)), torch.randn(32))
    f = empirical_loss(model, data, half_squared)
    assert torch.equal(f.w0, Flat.from_module(model).flatten(model))
    assert float(sharpness(f, rho=0.1)) == float(sharpness(f, f.w0, 0.1))
    assert float(sharpness(f, model, 0.1)) == float(sharpness(f, f.w0, 0.1))


def test_a_run_records_the_diagnostics_it_is_asked_for():
    import distsgd
    from distsgd.algorithms import DPSGD
    from distsgd.tasks.task import make_task

    task = make_task("logistic", n_workers=4, samples_per_worker=32, dim=6, batch_size=8, seed=0)
    res = distsgd.train(task, DPSGD(lr=0.1, topology="ring"), steps=6, eval_every=3, diagnostics="hessian_top,sharpness:0.1")
    for row in res.metrics:
        assert row["hessian_top"] > 0 and row["sharpness_0.1"] >= 0
    with pytest.raises(UserError, match="unknown diagnostic"):
        distsgd.train(task, DPSGD(lr=0.1, topology="ring"), steps=1, diagnostics="hessian")
