"""Classifier-free guidance on 8gaussians: a conditional model (each of the eight modes is a class)
trained with label dropout, sampled per class at guidance weights 0, 1 and 4.

    python examples/guidance_8gaussians.py           # ~20 s on 2 CPU cores; a GPU if present
    python examples/guidance_8gaussians.py --tiny    # a few seconds (what CI runs)

Weight 0 samples the null-class model alone (here, after 1000 steps, a ring through the eight
modes), 1 the conditional model (each class on its own mode), and 4 over-guides: each class's
samples overshoot into a streak along the ray through its mode (mean distance to the mode's centre
0.60 against 0.37 at w = 1 in our run). Writes guidance_8gaussians.png into --out.
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
    hidden, batch, steps = ([32, 32], 256, 50) if args.tiny else ([256, 256, 256], 1024, 1000)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = cufm.make_toy("8gaussians", 100_000, seed=0)  # labels: the mode, 0..7
    config = cufm.MlpConfig(data_dim=2, hidden=hidden, time_features=8, num_classes=data.num_classes)
    trainer = cufm.Trainer(cufm.Model(config, seed=0), data,
                           cufm.TrainConfig(batch_size=batch, lr=1e-3, label_dropout=0.2), device=args.device)
    trainer.fit(steps, lambda s, n, loss, secs: print(f"step {s}/{n}  loss {loss:.4f}"), every=max(1, steps // 4))

    weights = [0.0, 1.0, 4.0]
    rows = []
    for w in weights:
        per_class = []
        for c in range(data.num_classes):
            x = cufm.sample(trainer.model(), count=1000, solver="midpoint", steps=20, labels=[c], guidance=w,
                            device=args.device, seed=c)["x"]
            centre = data.x[data.labels == c].mean(axis=0)
            per_class.append((x, np.mean(np.linalg.norm(x - centre, axis=1))))
        rows.append(per_class)
        print(f"guidance {w}: mean distance of a class's samples to its mode's centre "
              f"{np.mean([d for _, d in per_class]):.3f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(weights), figsize=(4 * len(weights), 4))
    colours = plt.get_cmap("tab10")
    for ax, w, per_class in zip(axes, weights, rows):
        for c, (x, _) in enumerate(per_class):
            ax.scatter(x[:, 0], x[:, 1], s=1, color=colours(c), alpha=0.5)
        ax.set_title(f"guidance w = {w:g}")
        ax.set_aspect("equal")
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
    fig.tight_layout()
    fig.savefig(out / "guidance_8gaussians.png", dpi=80)
    print(f"wrote {out / 'guidance_8gaussians.png'}")


if __name__ == "__main__":
    main()
