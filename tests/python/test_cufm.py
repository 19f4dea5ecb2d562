"""The Python package against the C++ API: the same seeds give the same bits as the cufm CLI, arrays
in and out, the open API (integrate, VelocityField, loss_and_grad, step on a caller's batch) and
clear errors for bad input."""

import os
import subprocess

import numpy as np
import pytest

import cufm


def small_config(classes=0):
    return cufm.MlpConfig(data_dim=2, hidden=[32, 32], time_features=4, num_classes=classes)


def test_trains_and_samples_like_the_cli(tmp_path):
    """The CLI's training and sampling, repeated from Python with the same seeds: the same bits."""
    cli = os.environ.get("CUFM_CLI")
    if not cli:
        pytest.skip("CUFM_CLI is not set (the cufm binary to compare with)")
    out = tmp_path / "run"
    subprocess.run([cli, "train", "--data", "moons", "--n-data", "2000", "--hidden", "32,32", "--time-features", "4",
                    "--batch", "128", "--steps", "30", "--device", "cpu", "--quiet", "--out", str(out)], check=True)
    subprocess.run([cli, "sample", str(out / "checkpoint.safetensors"), "--count", "300", "--steps", "5",
                    "--device", "cpu", "--out", str(tmp_path / "s.npy")], check=True)
    cli_model, train, step = cufm.load_checkpoint(str(out / "checkpoint.safetensors"))
    assert step == 30
    data = cufm.make_toy("moons", 2000, 0)
    trainer = cufm.Trainer(cufm.Model(small_config(), train.seed), data, train, device="cpu")
    assert trainer.mlp in ("cpu", "cpu fused")  # the narrow models' fused step on AVX-512 CPUs
    trainer.fit(30)
    assert np.array_equal(trainer.model().params, cli_model.params)
    x = cufm.sample(trainer.model(), count=300, steps=5, device="cpu")["x"]
    assert np.array_equal(x, np.load(tmp_path / "s.npy"))


def test_fit_callback_step_on_batches_and_checkpoint(tmp_path):
    data = cufm.make_toy("8gaussians", 4000, 1)
    config = cufm.TrainConfig(batch_size=256, seed=3, lr=3e-3)
    trainer = cufm.Trainer(cufm.Model(small_config(), 3), data, config, device="cpu")
    seen = []
    trainer.fit(40, lambda step, total, loss, secs: seen.append((step, total, loss)), every=10)
    assert [s for s, _, _ in seen] == [10, 20, 30, 40]
    assert all(total == 40 for _, total, _ in seen)
    assert seen[-1][2] < seen[0][2]
    loss = trainer.step(data.x[:256])  # a caller's batch
    assert np.isfinite(loss) and trainer.step_count == 41
    trainer.save(str(tmp_path / "c.safetensors"), "8gaussians")
    model, _, step = cufm.load_checkpoint(str(tmp_path / "c.safetensors"))
    assert step == 41 and np.array_equal(model.params, trainer.model().params)
    no_data = cufm.Trainer(cufm.Model(small_config(), 3), config=config, device="cpu")
    with pytest.raises(cufm.Error, match="pass your batches to step"):
        no_data.fit(1)


def test_integrate_back_and_forth_and_the_field():
    model = cufm.Model(small_config(classes=3), 5)
    x = cufm.sample(model, count=200, steps=16, solver="rk4", labels=[1], guidance=2.0, device="cpu")["x"]
    assert x.shape == (200, 2) and x.dtype == np.float32
    back = cufm.integrate(model, x, solver="rk4", steps=64, t0=1.0, t1=0.0, labels=[1], guidance=2.0, device="cpu")
    there = cufm.integrate(model, back["x"], solver="rk4", steps=64, labels=[1], guidance=2.0, device="cpu")
    assert np.max(np.abs(there["x"] - x)) < 1e-3
    noise = cufm.integrate(model, back["x"], solver="euler", steps=3, keep_trajectory=True, device="cpu")
    assert noise["trajectory"].shape == (4, 200, 2) and noise["times"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    field = cufm.VelocityField(model, device="cpu")
    t = np.full(200, 0.25, dtype=np.float32)
    labels = np.zeros(200, dtype=np.int32)
    assert np.array_equal(field(0.25, x, labels), model.forward(x, t, labels))


def test_loss_and_grad_matches_a_float64_finite_difference():
    model = cufm.Model(cufm.MlpConfig(data_dim=2, hidden=[8]), 2)
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(16, 2)).astype(np.float32)
    eps = rng.normal(size=(16, 2)).astype(np.float32)
    t = rng.uniform(size=16).astype(np.float32)
    loss, grad = cufm.loss_and_grad(model, x1, t, eps, device="cpu")
    params = model.params.astype(np.float64)

    def loss64(p):
        w0, b0 = p[:24].reshape(8, 3), p[24:32]
        w1, b1 = p[32:48].reshape(2, 8), p[48:50]
        xt = t[:, None] * x1 + (1 - t[:, None]) * eps
        h = np.concatenate([xt, t[:, None]], axis=1) @ w0.T + b0
        h = h / (1 + np.exp(-h))
        v = h @ w1.T + b1
        return np.mean((v - (x1 - eps)) ** 2)

    assert loss == pytest.approx(loss64(params), rel=1e-5)
    fd = np.array([(loss64(params + d) - loss64(params - d)) / 2e-6 for d in np.eye(params.size) * 1e-6])
    assert np.allclose(grad, fd, rtol=1e-3, atol=1e-5 * np.abs(fd).max())


def test_loss_and_grad_takes_a_per_row_null_context():
    model = cufm.Model(cufm.MlpConfig(data_dim=2, hidden=[8], context_dim=3), 5)
    rng = np.random.default_rng(4)
    x1 = rng.normal(size=(12, 2)).astype(np.float32)
    eps = rng.normal(size=(12, 2)).astype(np.float32)
    t = rng.uniform(size=12).astype(np.float32)
    ctx = rng.normal(size=(12, 3)).astype(np.float32)
    with_ctx, _ = cufm.loss_and_grad(model, x1, t, eps, device="cpu", context=ctx)
    none, _ = cufm.loss_and_grad(model, x1, t, eps, device="cpu")
    all_null, _ = cufm.loss_and_grad(model, x1, t, eps, device="cpu", context=ctx,
                                     context_null=np.ones(12, dtype=bool))
    no_null, _ = cufm.loss_and_grad(model, x1, t, eps, device="cpu", context=ctx,
                                    context_null=np.zeros(12, dtype=bool))
    assert all_null == none and no_null == with_ctx and with_ctx != none
    with pytest.raises(cufm.Error, match="context_null given without a context"):
        cufm.loss_and_grad(model, x1, t, eps, device="cpu", context_null=np.ones(12, dtype=bool))


def test_arrays_converted_or_refused():
    model = cufm.Model(small_config(), 1)
    x64 = np.random.default_rng(1).normal(size=(10, 2))  # float64: converted once
    strided = np.asarray(x64, dtype=np.float32)[::2]  # non-contiguous: converted once
    field = cufm.VelocityField(model, device="cpu")
    assert field(0.5, x64).shape == (10, 2)
    assert field(0.5, strided).shape == (5, 2)
    with pytest.raises(cufm.Error, match=r"expected a float32 array of shape \[N, 2\]"):
        field(0.5, np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(TypeError):
        field(0.5, "not an array")
    with pytest.raises(cufm.Error, match=r"x at \(row 0, col 1\) is nan"):
        cufm.Dataset(np.array([[0.0, np.nan]], dtype=np.float32))
    with pytest.raises(cufm.Error, match="must lie in"):
        cufm.integrate(model, np.zeros((3, 2), dtype=np.float32), t1=2.0, device="cpu")
    with pytest.raises(cufm.Error, match="unknown solver"):
        cufm.sample(model, solver="rk7")
    # In-place outputs: the right dtype and shape, or a clear refusal; inputs are converted.
    x1 = np.arange(8).reshape(4, 2)  # int64: converted once
    x_t, t = np.empty((4, 2), np.float32), np.empty(4, np.float32)
    cufm.prepare_flow(x1, x_t, t, seed=1, step=2)
    assert np.all(np.isfinite(x_t)) and np.all((t >= 0) & (t <= 1))
    with pytest.raises(cufm.Error, match=r"prepare_flow: x_t: expected shape \[4, 2\], got \[4, 3\]"):
        cufm.prepare_flow(x1, np.empty((4, 3), np.float32), t)
    with pytest.raises(TypeError):  # a float64 output cannot be written in place
        cufm.prepare_flow(x1, np.empty((4, 2)), t)
    with pytest.raises(cufm.Error, match="x1 at row 0, column 1 is not finite"):
        cufm.prepare_flow(np.array([[0, np.inf]], np.float32), x_t[:1], t[:1])
    with pytest.raises(cufm.Error, match=r"flow_mse: v: expected shape \[4, 2\]"):
        cufm.flow_mse(x1, np.zeros((2, 2), np.float32))
    with pytest.raises(cufm.Error, match="fm_prepare: (x1 must be a CUDA array|this build of cuFM has no CUDA)"):
        cufm.fm_prepare(x_t, np.empty((4, 3), np.float32), t, np.zeros(1, np.int64), 0)


def test_ctrl_c_stops_fit_between_steps_with_the_state_intact():
    """A SIGINT during a long fit raises KeyboardInterrupt at the next callback chunk; the trainer's
    state is that of the steps done, and it trains on."""
    import signal

    data = cufm.make_toy("moons", 1000, 0)
    trainer = cufm.Trainer(cufm.Model(small_config(), 0), data, cufm.TrainConfig(batch_size=64), device="cpu")
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    previous = signal.signal(signal.SIGALRM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            trainer.fit(10**9, every=1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    done = trainer.step_count
    assert 0 < done < 10**9
    assert np.all(np.isfinite(trainer.model().params))
    trainer.step()
    assert trainer.step_count == done + 1


def test_type_stubs_are_installed():
    """The wheel carries nanobind's stubs (and py.typed) so that editors complete the API."""
    import pathlib

    package = pathlib.Path(cufm.__file__).parent
    assert (package / "py.typed").exists()
    stub = (package / "_cufm.pyi").read_text()
    for name in ("class Trainer", "def integrate(", "def loss_and_grad(", "class VelocityField", "def sample(",
                 "def prepare_flow(", "def flow_mse(", "def fm_prepare(", "def fm_loss_grad(", "def log_prob(",
                 "class Sampler"):
        assert name in stub, name


def test_log_prob_of_a_linear_field_is_analytic_and_matches_sampling():
    """A model whose field is exactly v = A x (a ReLU layer of [x; -x]): p_1 = N(0, e^A e^A^T)."""
    import math

    A = np.array([[0.3, -0.8], [0.8, -0.5]])
    config = cufm.MlpConfig(data_dim=2, hidden=[4], activation="relu")
    w0 = np.zeros((4, 3))
    w0[0, 0] = w0[1, 1] = 1.0
    w0[2, 0] = w0[3, 1] = -1.0
    w1 = np.concatenate([A, -A], axis=1)
    params = np.concatenate([w0.ravel(), np.zeros(4), w1.ravel(), np.zeros(2)]).astype(np.float32)
    model = cufm.Model(config, params)
    x = np.random.default_rng(3).normal(size=(100, 2)).astype(np.float32)
    M, term = np.eye(2), np.eye(2)
    for k in range(1, 30):
        term = term @ A / k
        M = M + term
    S = M @ M.T
    want = (-0.5 * np.einsum("ni,ij,nj->n", x, np.linalg.inv(S), x) - math.log(2 * math.pi)
            - 0.5 * math.log(np.linalg.det(S)))
    got = cufm.log_prob(model, x, atol=1e-7, rtol=1e-7, device="cpu")
    assert got["divergence"] == "exact" and got["log_prob"].shape == (100,) and got["mlp"] == "cpu divergence"
    assert np.allclose(got["log_prob"], want, atol=1e-4)
    assert np.allclose(got["div_integral"], np.trace(A), atol=1e-5)
    hutch = cufm.log_prob(model, x, solver="rk4", steps=40, divergence="hutchinson", probes=2, device="cpu")
    assert hutch["divergence"] == "hutchinson" and np.allclose(hutch["log_prob"], want, atol=1e-4)
    s = cufm.sample(model, count=300, solver="rk4", steps=40, with_log_prob=True, device="cpu")
    back = cufm.log_prob(model, s["x"], solver="rk4", steps=40, device="cpu")
    assert np.allclose(s["log_prob"], back["log_prob"], atol=1e-4)
    assert s["mlp"] == "cpu divergence"
    assert cufm.sample(model, count=10, steps=2, device="cpu")["mlp"] == "cpu"
    with pytest.raises(cufm.Error, match="with_log_prob needs t0 = 0"):
        cufm.integrate(model, x, t0=1.0, t1=0.0, with_log_prob=True, device="cpu")
    with pytest.raises(cufm.Error, match="unknown divergence"):
        cufm.log_prob(model, x, divergence="trace")


def test_a_kept_sampler_gives_the_module_functions_bits():
    model = cufm.Model(small_config(classes=3), 7)
    sampler = cufm.Sampler()
    a = sampler.sample(model, count=300, steps=8, labels=[2], guidance=1.5, device="cpu")
    b = cufm.sample(model, count=300, steps=8, labels=[2], guidance=1.5, device="cpu")
    assert np.array_equal(a["x"], b["x"])
    back = sampler.integrate(model, a["x"], steps=8, t0=1.0, t1=0.0, labels=[2], guidance=1.5, device="cpu")
    assert np.array_equal(back["x"], cufm.integrate(model, a["x"], steps=8, t0=1.0, t1=0.0, labels=[2],
                                                    guidance=1.5, device="cpu")["x"])
    again = sampler.sample(model, count=300, steps=8, labels=[2], guidance=1.5, device="cpu")  # reused
    assert np.array_equal(again["x"], a["x"])
    sampler.release()
    with pytest.raises(cufm.Error, match="unknown solver"):
        sampler.sample(model, solver="rk7")


def test_import_bounds_the_cpu_threads_spinning():
    """import cufm sets GOMP_SPINCOUNT before the extension loads GNU OpenMP, unless the user chose."""
    import subprocess
    import sys
    code = "import cufm; print(cufm.cpu_thread_wait_policy())"
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "GOMP_SPINCOUNT=1000"
    env["OMP_WAIT_POLICY"] = "passive"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "OMP_WAIT_POLICY=passive"


def test_bf16_on_the_cpu_follows_fp32_or_says_why():
    """precision='bf16' on the CPU backend: within the GPU's bf16 tolerances of the fp32 run (loss 5e-2,
    samples 5e-2), and not the same bits; where the CPU or the build lacks it, an error with the reason."""
    data = cufm.make_toy("8gaussians", 4000, 1)
    config = cufm.TrainConfig(batch_size=256, seed=3, lr=3e-3)
    why = cufm.cpu_bf16_unavailable_reason()
    if why:
        with pytest.raises(cufm.Error, match="precision bf16 on the CPU backend"):
            cufm.Trainer(cufm.Model(small_config(), 3), data, config, device="cpu", precision="bf16")
        return
    runs = {}
    for p in ("fp32", "bf16"):
        trainer = cufm.Trainer(cufm.Model(small_config(), 3), data, config, device="cpu", precision=p)
        trainer.fit(5)
        runs[p] = (trainer.loss(), trainer.model())
    (l32, m32), (l16, m16) = runs["fp32"], runs["bf16"]
    assert abs(l16 - l32) <= 5e-2 * l32
    assert not np.array_equal(m16.params, m32.params)
    x32 = cufm.sample(m32, count=500, steps=8, device="cpu")["x"]
    x16 = cufm.sample(m32, count=500, steps=8, device="cpu", precision="bf16")["x"]
    np.testing.assert_allclose(x16, x32, atol=5e-2, rtol=5e-2)
    assert not np.array_equal(x16, x32)
    with pytest.raises(cufm.Error, match="tf32 needs the CUDA backend"):
        cufm.sample(m32, count=10, steps=2, device="cpu", precision="tf32")
