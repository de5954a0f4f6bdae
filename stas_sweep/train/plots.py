"""Training curves as a PNG: loss, accuracy, token ratio and energy per epoch."""

from __future__ import annotations

from pathlib import Path


def plot_training_curves(history: list[dict], path: str | Path, title: str = "") -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(11, 2.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    panels = [("train_loss", "train loss"), ("accuracy", "val accuracy (%)"),
              ("token_ratio", "token ratio"), ("energy_mj", "energy (mJ / image)")]
    for ax, (key, label) in zip(axes, panels):
        ax.plot(epochs, [h.get(key) for h in history], marker="o", ms=3, label="paper convention")
        if key == "energy_mj" and any(h.get("energy_strict_mj") is not None for h in history):
            ax.plot(epochs, [h.get("energy_strict_mj") for h in history], marker="s", ms=3, ls="--",
                    label="strict (non-binary at MAC)")
            ax.legend(fontsize=7)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
