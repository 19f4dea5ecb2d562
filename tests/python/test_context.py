"""Context vectors from Python: datasets, training (with context dropout), sampling with one context
for all or one per sample, log_prob, the field, step(x1, context=...) and clear errors."""

import numpy as np
import pytest

import cufm


def gaussian_linear(n, d, seed, s=0.5):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n, d)).astype(np.float32)
    x = (theta + s * rng.normal(size=(n, d))).astype(np.float32)
    return theta, x


def test_dataset_and_config_carry_the_context():
    theta, x = gaussian_linear(100, 2, 0)
    data = cufm.Dataset(theta, context=x)
    assert data.context_dim == 2
    assert np.array_equal(data.context, x)
    config = cufm.MlpConfig(data_dim=2, hidden=[16], context_dim=2)
    assert config.input_dim() == 2 + 1 + 2 + 1  # x, t, the context and its null indicator
    with pytest.raises(cufm.Error, match="context must be a 2-D float32 array"):
        cufm.Dataset(theta, context=x[:50])
    with pytest.raises(cufm.Error, match="the model's context_dim is 3 but the data's context has 2 dims"):
        cufm.Trainer(cufm.Model(cufm.MlpConfig(data_dim=2, hidden=[16], context_dim=3)), data, device="cpu")


def test_trains_samples_and_scores_with_a_context():
    theta, x = gaussian_linear(20000, 2, 1)
    config = cufm.MlpConfig(data_dim=2, hidden=[64, 64], time_features=4, context_dim=2)
    train = cufm.TrainConfig(batch_size=256, seed=2, lr=2e-3, context_dropout=0.1)
    trainer = cufm.Trainer(cufm.Model(config, 0), cufm.Dataset(theta, context=x), train, device="cpu")
    trainer.fit(300)
    model = trainer.model()
    obs = np.array([0.8, -0.4], dtype=np.float32)
    one = cufm.sample(model, count=400, steps=8, context=obs, device="cpu")["x"]
    per = cufm.sample(model, count=400, steps=8, context=np.tile(obs, (400, 1)), device="cpu")["x"]
    assert np.array_equal(one, per)
    # After 300 steps the posterior mean is already near x / (1 + s^2) = 0.8 x.
    assert np.abs(one.mean(axis=0) - 0.8 * obs).max() < 0.25
    guided = cufm.sample(model, count=400, steps=8, context=obs, guidance=1.0, device="cpu")["x"]
    assert np.allclose(guided, one, atol=1e-5)
    lp = cufm.log_prob(model, one[:50], solver="midpoint", context=obs, device="cpu")["log_prob"]
    lp_null = cufm.log_prob(model, one[:50], solver="midpoint", device="cpu")["log_prob"]
    assert lp.shape == (50,) and np.isfinite(lp).all()
    assert lp.mean() > lp_null.mean()  # the posterior is narrower than the prior predictive
    field = cufm.VelocityField(model, device="cpu")
    v = field(0.5, one[:10], context=np.tile(obs, (10, 1)))
    t = np.full(10, 0.5, dtype=np.float32)
    assert np.array_equal(v, model.forward(one[:10], t, context=np.tile(obs, (10, 1))))


def test_step_on_a_batch_with_its_context():
    theta, x = gaussian_linear(128, 3, 4)
    config = cufm.MlpConfig(data_dim=3, hidden=[16], context_dim=3)
    trainer = cufm.Trainer(cufm.Model(config, 1), config=cufm.TrainConfig(batch_size=128), device="cpu")
    loss = trainer.step(theta, context=x)
    assert np.isfinite(loss)
    with pytest.raises(cufm.Error, match="context is required"):
        trainer.step(theta)
    with pytest.raises(cufm.Error, match=r"context must be a float32 array of shape \[128, 3\]"):
        trainer.step(theta, context=x[:, :2].copy())


def test_bad_contexts_are_named():
    model = cufm.Model(cufm.MlpConfig(data_dim=2, hidden=[8], context_dim=2), 0)
    plain = cufm.Model(cufm.MlpConfig(data_dim=2, hidden=[8]), 0)
    with pytest.raises(cufm.Error, match="the context must hold 2 floats"):
        cufm.sample(model, count=5, context=np.zeros(3, dtype=np.float32), device="cpu")
    with pytest.raises(cufm.Error, match="a context given, but the model has none"):
        cufm.sample(plain, count=5, context=np.zeros(2, dtype=np.float32), device="cpu")
    with pytest.raises(cufm.Error, match="a condition to guide towards"):
        cufm.sample(model, count=5, guidance=2.0, device="cpu")
    with pytest.raises(cufm.Error, match="not finite"):
        cufm.log_prob(model, np.zeros((4, 2), dtype=np.float32), context=np.array([1.0, np.nan], np.float32),
                      device="cpu")
