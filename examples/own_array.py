"""Training on your own array: a numpy array in, a model out, samples checked against the data.

    python examples/own_array.py           # ~30 s on 2 CPU cores; a GPU if present
    python examples/own_array.py --tiny    # a few seconds (what CI runs)

The data here is a 6-D correlated Gaussian mixture standing in for a table of yours: replace
`make_data` with `np.load("yours.npy")` (float32 or anything numpy converts; rows are points).
Two ways to train are shown: cuFM drawing batches from a Dataset, and your own loop handing
batches to Trainer.step.
"""

import argparse
import pathlib

import numpy as np

import cufm


def make_data(n, seed):
    """n points of two correlated Gaussian clusters in 6 dimensions (the same distribution for
    every seed)."""
    dim = 6
    a = np.random.default_rng(1234).normal(size=(dim, dim)) / np.sqrt(dim)
    centres = np.stack([np.full(dim, -1.5), np.full(dim, 1.5)])
    rng = np.random.default_rng(seed)
    which = rng.integers(0, 2, size=n)
    return (centres[which] + rng.normal(size=(n, dim)) @ a).astype(np.float32)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    hidden, batch, steps = ([32, 32], 256, 40) if args.tiny else ([256, 256, 256], 1024, 1000)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = make_data(50_000, seed=0)

    # 1. cuFM draws the batches from the array (copied once; on the GPU it lives on the device).
    config = cufm.MlpConfig(data_dim=x.shape[1], hidden=hidden, time_features=8)
    train = cufm.TrainConfig(batch_size=batch, lr=1e-3, ema_decay=0.99)  # EMA over ~100 steps
    trainer = cufm.Trainer(cufm.Model(config, seed=0), cufm.Dataset(x), train, device=args.device)
    trainer.fit(steps, lambda s, n, loss, secs: print(f"step {s}/{n}  loss {loss:.4f}"), every=max(1, steps // 4))
    trainer.save(str(out / "own_array.safetensors"), "own_array")

    # 2. Or your own loop: any batches you like (here: shuffled epochs), one step each.
    own = cufm.Trainer(cufm.Model(config, seed=0), config=train, device=args.device)
    for step in range(steps):
        if step % (len(x) // batch) == 0:
            order = rng.permutation(len(x))
        k = step % (len(x) // batch)
        own.step(x[order[k * batch:(k + 1) * batch]])

    model, _, saved_step = cufm.load_checkpoint(str(out / "own_array.safetensors"), ema=True)
    held_out = make_data(20_000, seed=1)
    for name, m in [("dataset + fit (EMA)", model), ("own loop", own.model())]:
        s = cufm.sample(m, count=20_000, solver="midpoint", steps=20, device=args.device)["x"]
        print(f"{name}: mean error {np.abs(s.mean(0) - held_out.mean(0)).max():.3f}, "
              f"covariance error {np.abs(np.cov(s.T) - np.cov(held_out.T)).max():.3f}, "
              f"sliced W2 {cufm.sliced_wasserstein2(s, held_out):.4f} "
              f"(data to data: {cufm.sliced_wasserstein2(make_data(20_000, seed=2), held_out):.4f})")
    print(f"checkpoint at step {saved_step}: {out / 'own_array.safetensors'}")


if __name__ == "__main__":
    main()
