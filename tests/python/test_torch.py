"""cufm.torch against PyTorch: to_torch/from_torch give the same velocities, flow_matching_loss's loss
and gradients are autograd's on the same draws (and the trainer's), and the CUDA paths match the
CPU's. Skipped, with the reason, where PyTorch (or a GPU) is absent."""

import numpy as np
import pytest

import cufm

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the cufm.torch tests need it")
ct = pytest.importorskip("cufm.torch")
F = torch.nn.functional

needs_cuda = pytest.mark.skipif(
    not (cufm.cuda_built() and torch.cuda.is_available()),
    reason="needs a CUDA build of cuFM and a GPU that PyTorch sees",
)


def config(activation="silu", classes=0, time_features=4):
    return cufm.MlpConfig(data_dim=3, hidden=[48, 40], activation=activation, time_features=time_features,
                          num_classes=classes)


@pytest.mark.parametrize("activation", ["silu", "relu", "gelu"])
@pytest.mark.parametrize("classes,time_features", [(0, 0), (4, 6)])
def test_to_torch_gives_the_same_velocities(activation, classes, time_features):
    model = cufm.Model(config(activation, classes, time_features), 3)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    t = rng.uniform(size=500).astype(np.float32)
    labels = rng.integers(0, classes + 1, size=500).astype(np.int32) if classes else None
    want = model.forward(x, t, labels)
    with torch.no_grad():
        got = ct.Velocity(model)(torch.from_numpy(x), torch.from_numpy(t),
                                 None if labels is None else torch.from_numpy(labels)).numpy()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    seq = ct.to_torch(model)
    if activation == "gelu":
        assert seq[1].approximate == "tanh"
    back = ct.from_torch(seq, 3, time_features=time_features, num_classes=classes)
    assert back.config == model.config and np.array_equal(back.params, model.params)


def test_from_torch_refuses_what_cufm_cannot_run():
    nn = torch.nn
    with pytest.raises(ValueError, match="approximate='tanh'"):
        ct.from_torch(nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.Linear(8, 2)), 2)
    with pytest.raises(ValueError, match="first Linear takes 4 inputs; the model's input row has 3"):
        ct.from_torch(nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 2)), 2)
    with pytest.raises(ValueError, match="one activation kind"):
        ct.from_torch(nn.Sequential(nn.Linear(3, 8), nn.SiLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)), 2)
    with pytest.raises(ValueError, match="unsupported layer Tanh"):
        ct.from_torch(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)), 2)
    with pytest.raises(TypeError, match="nn.Sequential"):
        ct.from_torch(nn.Linear(3, 2), 2)


class OwnModel(torch.nn.Module):
    """A model of the user's own, not cuFM's shape: v(x, t) = MLP([x, t, t^2])."""

    def __init__(self, dim, classes=0):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(classes + 1, 16) if classes else None
        self.inp = torch.nn.Linear(dim + 2, 16)
        self.out = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, dim))

    def forward(self, x, t, labels=None):
        h = self.inp(torch.cat([x, t[:, None], t[:, None] ** 2], dim=1))
        if self.embed is not None:
            h = h + self.embed(labels)
        return self.out(h)


def reference(model, x1, seed, step, labels=None, classes=0, dropout=0.0, sigma_min=0.0):
    """The same draws from cufm.prepare_flow, the loss by F.mse_loss and its gradients by autograd."""
    B, D = x1.shape
    x_t, t, eps = np.empty((B, D), np.float32), np.empty(B, np.float32), np.empty((B, D), np.float32)
    out = np.empty(B, np.int32) if classes else None
    cufm.prepare_flow(x1.numpy(), x_t, t, None if labels is None else labels.numpy().astype(np.int32), out, eps,
                      seed=seed, step=step, num_classes=classes, label_dropout=dropout, sigma_min=sigma_min)
    model.zero_grad()
    args = (torch.from_numpy(x_t), torch.from_numpy(t)) + ((torch.from_numpy(out).long(),) if classes else ())
    loss = F.mse_loss(model(*args), x1 - (1 - sigma_min) * torch.from_numpy(eps))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()], out


@pytest.mark.parametrize("classes", [0, 3])
def test_flow_matching_loss_is_autograds_on_the_same_draws(classes):
    torch.manual_seed(1)
    x1 = torch.randn(600, 5) * 2 + 1
    labels = torch.randint(0, classes, (600,)) if classes else None
    model = OwnModel(5, classes)
    kw = dict(num_classes=classes, label_dropout=0.3 if classes else 0.0, sigma_min=0.01)
    want_loss, want_grads, labels_out = reference(model, x1, 7, 11, labels, kw["num_classes"], kw["label_dropout"],
                                                  kw["sigma_min"])
    if classes:
        assert (labels_out == classes).any() and (labels_out != classes).any()  # some dropped, some kept
    model.zero_grad()
    loss = ct.flow_matching_loss(model, x1, seed=7, step=11, labels=labels, **kw)
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    for got, want in zip([p.grad for p in model.parameters()], want_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())
    other = ct.flow_matching_loss(model, x1, seed=7, step=12, labels=labels, **kw)
    assert other.item() != loss.item()  # another step, other draws


def test_flow_matching_loss_is_the_trainers_step():
    """cuFM's own model through PyTorch: its first loss is Trainer.step(x1)'s at the same seed."""
    model = cufm.Model(config(), 4)
    x1 = cufm.make_toy("8gaussians", 256, 2).x
    x1 = np.concatenate([x1, x1[:, :1]], axis=1)  # three columns
    trainer = cufm.Trainer(model, config=cufm.TrainConfig(batch_size=256, seed=9), device="cpu")
    want = trainer.step(x1)
    got = ct.flow_matching_loss(ct.Velocity(model), torch.from_numpy(x1), seed=9, step=0)
    assert got.item() == pytest.approx(want, rel=2e-6)


def test_a_users_model_learns_with_it():
    """Adam on the loss lowers it on fixed held-out draws (steps never trained on)."""
    torch.manual_seed(2)
    model = OwnModel(2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = torch.from_numpy(cufm.make_toy("moons", 20000, 0).x)
    held_out = torch.from_numpy(cufm.make_toy("moons", 4096, 1).x)

    def held_out_loss():
        with torch.no_grad():
            return np.mean([ct.flow_matching_loss(model, held_out, seed=99, step=s).item() for s in range(4)])

    before = held_out_loss()
    for step in range(300):
        batch = data[torch.randint(0, len(data), (256,))]
        loss = ct.flow_matching_loss(model, batch, seed=1, step=step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.8 * before


def test_bad_tensors_refused_clearly():
    model = OwnModel(2)
    with pytest.raises(ValueError, match=r"2-D tensor \[B, D\]"):
        ct.flow_matching_loss(model, torch.zeros(5))
    with pytest.raises(cufm.Error, match="x1 at row 1, column 0 is not finite"):
        ct.flow_matching_loss(model, torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match=r"the model must return a tensor of shape \[4, 2\]"):
        ct.flow_matching_loss(lambda x, t: x[:, :1], torch.zeros(4, 2))
    with pytest.raises(ValueError, match="num_classes is 0"):
        ct.flow_matching_loss(model, torch.zeros(4, 2), labels=torch.zeros(4))


def test_tensors_in_numpy_out_and_velocity_on_tensors():
    model = cufm.Model(config(), 5)
    x = torch.randn(64, 3)
    field = cufm.VelocityField(model, device="cpu")
    from_numpy = field(0.4, x.numpy())
    assert np.array_equal(field(0.4, x), from_numpy)  # a CPU tensor through DLPack
    got = ct.velocity(field, 0.4, x)
    assert isinstance(got, torch.Tensor) and np.array_equal(got.numpy(), from_numpy)
    assert np.array_equal(field(0.4, x[::2]), field(0.4, x.numpy()[::2]))  # non-contiguous: converted


@needs_cuda
@pytest.mark.parametrize("classes", [0, 3])
def test_cuda_flow_matching_loss_matches_the_cpu(classes):
    torch.manual_seed(3)
    x1 = torch.randn(3000, 5)
    labels = torch.randint(0, classes, (3000,)) if classes else None
    kw = dict(seed=4, step=2, num_classes=classes, label_dropout=0.2 if classes else 0.0, sigma_min=0.01)
    model = OwnModel(5, classes)
    cpu_loss = ct.flow_matching_loss(model, x1, labels=labels, **kw)
    cpu_loss.backward()
    cpu_grads = [p.grad.clone() for p in model.parameters()]
    model = model.cuda()
    model.zero_grad()
    step = torch.tensor([2], dtype=torch.int64, device="cuda")  # a device counter
    kw["step"] = step
    loss = ct.flow_matching_loss(model, x1.cuda(), labels=None if labels is None else labels.cuda(), **kw)
    assert loss.is_cuda
    loss.backward()
    assert loss.item() == pytest.approx(cpu_loss.item(), rel=1e-5)
    for got, want in zip([p.grad.cpu() for p in model.parameters()], cpu_grads):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-5 * want.abs().max().item())


@needs_cuda
def test_cuda_velocity_in_place_matches_the_cpu():
    model = cufm.Model(config(classes=3), 6)
    x = torch.randn(1000, 3)
    labels = torch.randint(0, 4, (1000,), dtype=torch.int32)
    want = cufm.VelocityField(model, device="cpu")(0.3, x.numpy(), labels.numpy())
    field = cufm.VelocityField(model, device="cuda")
    got = ct.velocity(field, 0.3, x.cuda(), labels.cuda())
    assert got.is_cuda
    assert np.allclose(got.cpu().numpy(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(cufm.Error, match="needs out"):
        field(0.3, x.cuda())


class ContextModel(torch.nn.Module):
    """A user's model conditioned on a context: [x_t, t, context, null indicator] through an MLP."""

    def __init__(self, dim, k):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1 + k + 1, 32), torch.nn.SiLU(), torch.nn.Linear(32, dim))

    def forward(self, x, t, context=None, context_null=None):
        return self.net(torch.cat([x, t[:, None], context, context_null.float()[:, None]], dim=1))


def test_flow_matching_loss_with_a_context_is_the_trainers_step():
    """A cuFM model with a context through PyTorch, context dropout included: Trainer.step's loss."""
    cfg = cufm.MlpConfig(data_dim=3, hidden=[32, 32], time_features=4, context_dim=4)
    model = cufm.Model(cfg, 5)
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(256, 3)).astype(np.float32)
    c = rng.normal(size=(256, 4)).astype(np.float32)
    tc = cufm.TrainConfig(batch_size=256, seed=9, context_dropout=0.3)
    want = cufm.Trainer(model, config=tc, device="cpu").step(x1, context=c)
    got = ct.flow_matching_loss(ct.Velocity(model), torch.from_numpy(x1), seed=9, step=0,
                                context=torch.from_numpy(c), context_dropout=0.3)
    assert got.item() == pytest.approx(want, rel=2e-6)
    without = ct.flow_matching_loss(ct.Velocity(model), torch.from_numpy(x1), seed=9, step=0,
                                    context=torch.from_numpy(c))
    assert without.item() != got.item()  # the drops change the rows the model sees
    own = ContextModel(3, 4)
    loss = ct.flow_matching_loss(own, torch.from_numpy(x1), seed=9, context=torch.from_numpy(c), context_dropout=0.3)
    loss.backward()
    assert all(p.grad is not None for p in own.parameters())


def test_velocity_module_and_from_torch_with_a_context():
    cfg = cufm.MlpConfig(data_dim=2, hidden=[16], context_dim=3)
    model = cufm.Model(cfg, 2)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 2)).astype(np.float32)
    c = rng.normal(size=(50, 3)).astype(np.float32)
    t = np.full(50, 0.3, dtype=np.float32)
    want = model.forward(x, t, context=c)
    with torch.no_grad():
        got = ct.Velocity(model)(torch.from_numpy(x), 0.3, context=torch.from_numpy(c)).numpy()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-6)
    back = ct.from_torch(ct.to_torch(model), data_dim=2, context_dim=3)
    assert np.array_equal(back.params, model.params)
    field = cufm.VelocityField(model, device="cpu")
    assert np.allclose(ct.velocity(field, 0.3, torch.from_numpy(x), context=torch.from_numpy(c)).numpy(), want,
                       rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("coupling,classes", [("exact", 0), ("exact", 3), ("sinkhorn", 0)])
def test_flow_matching_loss_with_a_coupling_is_the_trainers_step(coupling, classes):
    """With OT coupling, cuFM's own model through PyTorch gives Trainer.step(x1)'s first loss."""
    cfg = cufm.MlpConfig(data_dim=2, hidden=[32], num_classes=classes)
    model = cufm.Model(cfg, 4)
    data = cufm.make_toy("moons", 256, 2)
    labels = (data.labels % classes).astype(np.int32) if classes else None
    tc = cufm.TrainConfig(batch_size=256, seed=9, coupling=coupling, label_dropout=0.2 if classes else 0.0)
    trainer = cufm.Trainer(model, config=tc, device="cpu")
    want = trainer.step(data.x, labels) if classes else trainer.step(data.x)
    got = ct.flow_matching_loss(ct.Velocity(model), torch.from_numpy(data.x), seed=9, step=0,
                                labels=None if labels is None else torch.from_numpy(labels),
                                num_classes=classes, label_dropout=0.2 if classes else 0.0, coupling=coupling)
    assert got.item() == pytest.approx(want, rel=1e-5)
    plain = ct.flow_matching_loss(ct.Velocity(model), torch.from_numpy(data.x), seed=9, step=0,
                                  labels=None if labels is None else torch.from_numpy(labels),
                                  num_classes=classes, label_dropout=0.2 if classes else 0.0)
    assert plain.item() > 1.2 * got.item()  # the pairs shorten the paths
    with pytest.raises(ValueError, match="not available with a context"):
        ct.flow_matching_loss(lambda *a, **k: a[0], torch.from_numpy(data.x), context=torch.ones(256, 2),
                              coupling=coupling)


@needs_cuda
@pytest.mark.parametrize("coupling,classes", [("exact", 0), ("exact", 3), ("sinkhorn", 0)])
def test_cuda_flow_matching_loss_with_a_coupling_matches_the_cpu(coupling, classes):
    torch.manual_seed(5)
    x1 = torch.randn(1000, 4) * 2
    labels = torch.randint(0, classes, (1000,)) if classes else None
    kw = dict(seed=4, step=3, num_classes=classes, label_dropout=0.2 if classes else 0.0, coupling=coupling)
    model = OwnModel(4, classes)
    cpu_loss = ct.flow_matching_loss(model, x1, labels=labels, **kw)
    model = model.cuda()
    kw["step"] = torch.tensor([3], dtype=torch.int64, device="cuda")
    loss = ct.flow_matching_loss(model, x1.cuda(), labels=None if labels is None else labels.cuda(), **kw)
    # The GPU's auction (Jacobi) and the CPU's (Gauss-Seidel) may settle near-ties apart, and
    # Sinkhorn's sums run in another order: the losses agree closely, not to the bit.
    assert loss.item() == pytest.approx(cpu_loss.item(), rel=2e-2)
