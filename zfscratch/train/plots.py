"""Figures of a training run: the loss/error/lr curve and the confusion matrix."""
from __future__ import annotations

import numpy as np

from zfscratch.util.figures import new_figure, save_png


def _figure(w, h):
    return new_figure(w, h, dpi=100, layout="constrained")


def _save_fig(fig, path):
    save_png(fig, path, tight=False)


def plot_curve(history, path, title="training"):
    """Loss, error (1 - accuracy) and learning rate per epoch; lr annealings marked (dotted)."""
    from matplotlib.ticker import MaxNLocator
    fig = _figure(13, 3.8)
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, k) for k in (1, 2, 3))
    ep = [h["epoch"] for h in history]
    ax1.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax1.set_ylabel("cross-entropy loss")
    ax2.plot(ep, [100 * (1 - h["train_acc"]) for h in history], "o-", label="train (dropout, augmented)")
    ax2.plot(ep, [100 * (1 - h["val_acc"]) for h in history], "s-", label="validation top-1")
    ax2.set_ylabel("error (%)")
    ax3.plot(ep, [h["lr"] for h in history], "o-", color="tab:green")
    ax3.set_ylabel("learning rate (last step of the epoch)")
    ax3.set_ylim(bottom=0)
    annealed = [h["epoch"] for h in history if h.get("lr_annealed")]
    for ax in (ax1, ax2, ax3):
        for e in annealed:
            ax.axvline(e, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.legend(), ax2.legend()
    if history:
        last = history[-1]
        fig.suptitle(f"{title}: validation accuracy {last['val_acc']:.2%} after {last['epoch']} epochs "
                     f"({last['elapsed_s'] / 60:.1f} min wall)" + ("; dotted: lr annealed on plateau" if annealed else ""))
    _save_fig(fig, path)


def plot_confusion(conf, classes, path, title="confusion matrix"):
    """Row-normalized confusion matrix (rows: true class, columns: predicted) with counts."""
    conf = np.asarray(conf)
    k = conf.shape[0]
    fig = _figure(max(5, 0.55 * k + 2), max(4, 0.5 * k + 1.5))
    ax = fig.add_subplot(1, 1, 1)
    rows = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, np.maximum(rows, 1))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set_xticks(range(k)), ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=9)
    ax.set_yticklabels(classes, fontsize=9)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=9,
                            color="white" if frac[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    _save_fig(fig, path)
