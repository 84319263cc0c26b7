"""The one seeding recipe: a stream per (seed, key, purpose), never per process."""

import io
import itertools

import pytest
import torch

from distsgd import rng
from distsgd.compress import QSGD, Natural, RandK
from distsgd.robust import BGMD, Attack


def test_streams_are_distinct_per_seed_worker_and_purpose():
    seeds, keys = (0, 1, 2, 3, 10**12), (rng.SERVER, 0, 1, 2, 7, 255)
    names = [p for p in rng.PURPOSES if p != "sampling"]
    all_seeds = [rng.stream_seed(s, k, p) for s, k, p in itertools.product(seeds, keys, names)]
    assert len(set(all_seeds)) == len(all_seeds)
    assert all(0 <= s < 2**63 for s in all_seeds)
    sampling = {rng.stream_seed(s, k, "sampling") for s, k in itertools.product(seeds, keys)}
    assert not sampling & set(all_seeds)
    # and the numbers differ, not only the seeds
    draws = {tuple(torch.rand(4, generator=rng.generator(0, w, p)).tolist()) for w in range(4) for p in names}
    assert len(draws) == 4 * len(names)


def test_the_recipe_is_a_pure_function():
    assert rng.stream_seed(5, 3, "compress") == rng.stream_seed(5, 3, "compress")  # no hash randomisation
    with pytest.raises(ValueError, match="unknown random stream"):
        rng.stream_seed(0, 0, "compres")


def test_sampling_keeps_the_workers_formula_bit_identical():
    from distsgd.workers import _worker_seed

    for seed, w in itertools.product((0, 1, 3, 2**40), range(9)):
        assert rng.stream_seed(seed, w, "sampling") == _worker_seed(seed, w)


@pytest.mark.parametrize("draw", [rng.rand, rng.randn, lambda g, size: rng.randint(g, 2**62, size)])
def test_a_worker_draws_the_same_whichever_process_holds_it(draw):
    n, d = 8, 37
    every = rng.generators(11, range(n), "compress")  # one process holding all 8 workers
    splits = [range(0, 2), range(2, 4), range(4, 8)]  # three processes holding slices
    held = [rng.generators(11, r, "compress") for r in splits]
    for _ in range(3):  # consecutive draws stay in step
        ref = draw(every, (n, d))
        got = torch.cat([draw(g, (len(r), d)) for g, r in zip(held, splits, strict=True)])
        assert torch.equal(ref, got)
    # row i is exactly worker i's own stream
    assert torch.equal(rng.rand(rng.generators(11, [5], "compress"), (1, d))[0],
                       torch.rand(d, generator=rng.generator(11, 5, "compress")))


def test_one_generator_or_none_draws_the_whole_tensor_at_once():
    a = rng.rand(torch.Generator().manual_seed(3), (4, 10))
    assert torch.equal(a, torch.rand(4, 10, generator=torch.Generator().manual_seed(3)))
    assert rng.rand(None, (2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="3 generators for 2 rows"):
        rng.rand(rng.generators(0, range(3), "compress"), (2, 5))


def test_states_survive_a_weights_only_checkpoint():
    gens = rng.generators(2, range(3, 6), "compress")
    torch.rand(5, generator=gens[1])
    buf = io.BytesIO()
    torch.save({"rng": rng.save(gens)}, buf)
    buf.seek(0)
    back = rng.load(torch.load(buf, weights_only=True)["rng"])
    for g, h in zip(gens, back, strict=True):
        assert torch.equal(torch.rand(7, generator=g), torch.rand(7, generator=h))
    assert torch.equal(rng.states(2, range(3, 6), "compress")[1], rng.generator(2, 4, "compress").get_state())


@pytest.mark.parametrize("c", [QSGD(4, 16), RandK(ratio=0.2), Natural()], ids=["qsgd", "randk", "natural"])
def test_stochastic_compressors_compress_a_worker_alike_in_any_split(c):
    n, d = 6, 50
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    every = rng.generators(4, range(n), "compress")
    halves = [rng.generators(4, range(0, 3), "compress"), rng.generators(4, range(3, 6), "compress")]
    for _ in range(2):
        ref = c.decompress(c.compress(x, every))
        got = torch.cat([c.decompress(c.compress(x[k * 3 : k * 3 + 3], g)) for k, g in enumerate(halves)])
        assert torch.equal(ref, got)


def test_shared_streams_depend_on_the_step_not_the_process():
    g = torch.randn(8, 30, generator=torch.Generator().manual_seed(1))
    byz = torch.tensor([1, 6])
    attack = Attack("gaussian", seed=3)
    assert torch.equal(attack(g, byz, 5), attack(g.clone(), byz, 5))  # any process, same rows
    assert not torch.equal(attack(g, byz, 5), attack(g, byz, 6))
    noise = attack(g, byz, 5) - g[byz]
    expected = 10.0 * torch.randn(2, 30, generator=rng.generator(3, 5, "attack"))
    assert torch.allclose(noise, expected, atol=1e-5)
    # BGMD's block and the attack no longer share a seed (they did: seed·1000003 + t for both)
    rule = BGMD(f=2, beta=0.3, seed=3)
    scores = torch.ones(30)
    e = torch.rand(30, generator=rng.generator(3, 5, "bgmd")).clamp_(min=1e-30).log_().neg_()
    from distsgd.robust.bgmd import top_k_indices

    assert torch.equal(rule.block(scores, 9, 5), top_k_indices(scores / e, 9))
