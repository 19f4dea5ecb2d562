"""Minibatch optimal-transport coupling from Python: cufm.couple (exact permutations, groups,
Sinkhorn's seeded draws), TrainConfig.coupling through training and checkpoints, and clear errors."""

import itertools

import numpy as np
import pytest

import cufm


def points(b, d, seed):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-4, 4, size=(b, d)).astype(np.float32), rng.normal(size=(b, d)).astype(np.float32))


def mean_cost(x1, eps, pairs):
    return float(np.mean(np.sum((x1.astype(np.float64) - eps[pairs]) ** 2, axis=1)))


def test_exact_is_the_optimal_permutation():
    x1, eps = points(6, 2, 0)
    pairs = cufm.couple(x1, eps, kind="exact")
    assert pairs.dtype == np.uint32 and sorted(pairs.tolist()) == list(range(6))
    best = min(mean_cost(x1, eps, np.array(p)) for p in itertools.permutations(range(6)))
    assert mean_cost(x1, eps, pairs) == pytest.approx(best, rel=1e-6)
    assert np.array_equal(cufm.couple(x1, eps, kind="independent"), np.arange(6))


def test_groups_and_sinkhorn_draws():
    x1, eps = points(300, 3, 1)
    groups = (np.arange(300) % 4).astype(np.int32)
    for kind in ("exact", "sinkhorn"):
        pairs = cufm.couple(x1, eps, groups=groups, kind=kind, seed=2, step=3)
        assert np.array_equal(groups[pairs], groups)
        assert mean_cost(x1, eps, pairs) < 0.8 * mean_cost(x1, eps, np.arange(300))
    a = cufm.couple(x1, eps, kind="sinkhorn", seed=2, step=3)
    assert np.array_equal(a, cufm.couple(x1, eps, kind="sinkhorn", seed=2, step=3, threads=1))
    assert not np.array_equal(a, cufm.couple(x1, eps, kind="sinkhorn", seed=2, step=4))


def test_training_with_coupling_is_recorded_and_reproducible(tmp_path):
    data = cufm.make_toy("moons", 2000, 0)
    config = cufm.TrainConfig(batch_size=128, seed=1, coupling="sinkhorn", ot_reg=0.1)
    assert config.coupling == "sinkhorn" and config.ot_reg == pytest.approx(0.1)
    model = cufm.Model(cufm.MlpConfig(data_dim=2, hidden=[32, 32]), seed=0)
    runs = []
    for threads in (1, 2):
        trainer = cufm.Trainer(model, data, config, device="cpu", threads=threads)
        trainer.run(10)
        runs.append(trainer.model().params)
    assert np.array_equal(runs[0], runs[1])
    path = str(tmp_path / "ot.safetensors")
    trainer.save(path)
    _, train, step = cufm.load_checkpoint(path)
    assert (train.coupling, step) == ("sinkhorn", 10) and train.ot_reg == pytest.approx(0.1)


def test_bad_coupling_input():
    x1, eps = points(4, 2, 3)
    with pytest.raises(cufm.Error, match="unknown coupling 'ot'"):
        cufm.TrainConfig(coupling="ot")
    with pytest.raises(cufm.Error, match="ot_reg"):
        cufm.couple(x1, eps, kind="sinkhorn", reg=-1.0)
    with pytest.raises(cufm.Error, match="same shape"):
        cufm.couple(x1, eps[:3])
    bad = eps.copy()
    bad[1, 1] = np.nan
    with pytest.raises(cufm.Error, match="eps has a non-finite value at row 1"):
        cufm.couple(x1, bad)
