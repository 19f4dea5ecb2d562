"""Simulation-based inference with a context: flow-matching posterior estimation (FMPE) on the
Gaussian-linear task, where the answer is known in closed form.

    python examples/gaussian_linear_sbi.py           # ~2 min on 2 CPU cores; a GPU if present
    python examples/gaussian_linear_sbi.py --tiny    # a few seconds (what CI runs)

theta ~ N(0, I_D) and the simulator gives x = theta + s * noise, so the posterior p(theta | x) is
N(x / (1 + s^2), s^2 / (1 + s^2) I). A model of theta conditioned on the context x, trained on
simulated pairs, samples the posterior for an observation and scores points under it; both are
compared with the analytic posterior here.
"""

import argparse
import pathlib

import numpy as np

import cufm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=".")
    args = p.parse_args()
    d, s = 10, 0.5
    hidden, steps = ([64, 64], 100) if args.tiny else ([256, 256, 256], 6000)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Simulated pairs: theta is what the model generates, x the context it is conditioned on.
    rng = np.random.default_rng(0)
    theta = rng.normal(size=(100_000, d)).astype(np.float32)
    x = (theta + s * rng.normal(size=theta.shape)).astype(np.float32)
    config = cufm.MlpConfig(data_dim=d, context_dim=d, hidden=hidden, time_features=8)
    train = cufm.TrainConfig(batch_size=512, lr=2e-3, lr_schedule="cosine", decay_steps=steps, min_lr=1e-4)
    trainer = cufm.Trainer(cufm.Model(config, seed=0), cufm.Dataset(theta, context=x), train, device=args.device)
    trainer.fit(steps, lambda k, n, loss, secs: print(f"step {k}/{n}  loss {loss:.4f}"), every=max(1, steps // 4))
    model = trainer.model()
    trainer.save(str(out / "gaussian_linear_sbi.safetensors"), "gaussian_linear_sbi")

    # One observation: posterior samples (its context for every sample) against the analytic mean
    # and variance, and the log-density of analytic posterior draws against the analytic one.
    x_obs = (rng.normal(size=d) + s * rng.normal(size=d)).astype(np.float32)
    mean, var = x_obs / (1 + s * s), s * s / (1 + s * s)
    post = cufm.sample(model, count=4000, steps=32, context=x_obs, device=args.device)["x"]
    print(f"posterior mean error {np.abs(post.mean(0) - mean).max():.3f} (posterior sd {np.sqrt(var):.3f}), "
          f"variance {post.var(0).mean():.3f} (analytic {var:.3f})")
    draws = (mean + np.sqrt(var) * rng.normal(size=(500, d))).astype(np.float32)
    want = -0.5 * ((draws - mean) ** 2).sum(1) / var - 0.5 * d * np.log(2 * np.pi * var)
    got = cufm.log_prob(model, draws, context=x_obs, device=args.device)["log_prob"]
    print(f"log p: mean absolute error {np.abs(got - want).mean():.3f} over 500 posterior draws "
          f"(mean log p {want.mean():.2f})")


if __name__ == "__main__":
    main()
