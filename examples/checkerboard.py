"""facebookresearch/flow_matching's 2-D checkerboard example, end to end with cuFM: train an MLP
velocity field, sample with the midpoint solver, plot the flow from noise to data.

    python examples/checkerboard.py                 # ~1.5 minutes on 2 CPU cores; a GPU if present
    python examples/checkerboard.py --full          # the original's size: 4x512, batch 4096, 20k steps
    python examples/checkerboard.py --tiny          # a few seconds (what CI runs)

Writes checkerboard.png (and checkpoint.safetensors) into --out.
"""

import argparse
import pathlib
import time

import numpy as np

import cufm

SIZES = {  # hidden widths, batch, steps
    "tiny": ([32, 32], 256, 50),
    "reduced": ([256, 256, 256], 1024, 3000),
    "full": ([512] * 4, 4096, 20000),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_const", dest="size", const="tiny")
    size.add_argument("--full", action="store_const", dest="size", const="full")
    p.add_argument("--device", default="auto", help="auto (the GPU when present), cuda or cpu")
    p.add_argument("--out", default=".", help="folder for the PNG and the checkpoint")
    args = p.parse_args()
    hidden, batch, steps = SIZES[args.size or "reduced"]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = cufm.make_toy("checkerboard", 200_000, seed=0)
    model = cufm.Model(cufm.MlpConfig(data_dim=2, hidden=hidden, activation="silu"), seed=0)
    # A cosine decay from 3e-3 to 1e-4: sharp squares in a few thousand steps (the original trains 20,000
    # steps at a constant 1e-3).
    train = cufm.TrainConfig(batch_size=batch, lr=3e-3, lr_schedule="cosine", decay_steps=steps, min_lr=1e-4, seed=0)
    trainer = cufm.Trainer(model, data, train, device=args.device)
    start = time.perf_counter()
    trainer.fit(steps, lambda step, total, loss, secs: print(f"step {step}/{total}  loss {loss:.4f}  {secs:.1f} s"),
                every=max(1, steps // 5))
    print(f"trained {steps} steps on the {trainer.device} in {time.perf_counter() - start:.1f} s")
    trainer.save(str(out / "checkpoint.safetensors"), "checkerboard")

    result = cufm.sample(trainer.model(), count=50_000, solver="midpoint", steps=10, keep_trajectory=True,
                         device=args.device, seed=1)
    x = result["x"]
    held_out = cufm.make_toy("checkerboard", 50_000, seed=1).x
    print(f"sliced W2 to fresh data: {cufm.sliced_wasserstein2(x, held_out):.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times, trajectory = result["times"], result["trajectory"]
    shown = [0, 2, 4, 6, 8, 10]
    fig, axes = plt.subplots(1, len(shown) + 1, figsize=(3 * (len(shown) + 1), 3.2))
    for ax, k in zip(axes, shown):
        ax.hist2d(trajectory[k, :, 0], trajectory[k, :, 1], bins=200, range=[[-4.6, 4.6], [-4.6, 4.6]], cmap="viridis")
        ax.set_title(f"t = {times[k]:.1f}")
    axes[-1].hist2d(held_out[:, 0], held_out[:, 1], bins=200, range=[[-4.6, 4.6], [-4.6, 4.6]], cmap="viridis")
    axes[-1].set_title("data")
    for ax in axes:
        ax.set_aspect("equal")
        ax.axis("off")
    fig.suptitle(f"cuFM, checkerboard: MLP {'x'.join(map(str, hidden))}, batch {batch}, {steps} steps on the "
                 f"{trainer.device}; midpoint, 10 steps")
    fig.tight_layout()
    fig.savefig(out / "checkerboard.png", dpi=80)
    print(f"wrote {out / 'checkerboard.png'}")


if __name__ == "__main__":
    main()
