"""Figures of the paper, as PNG: the distillation cost (Fig. 2) and trajectories projected to 2-D (Fig. 7).

matplotlib is an optional extra (``pip install trajir[plot]``); without it these functions say so.
"""
import torch


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'trajir[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_cost(cost, best_paths, path):
    """Left: cost of one jump from the start to grid index i, from i to the end, and of the two-jump path through
    i (the paper's C(T->i) + C(i->0)). Right: total cost of the best M-jump path against M."""
    plt = _pyplot()
    c = cost.double()
    k = c.shape[0] - 1
    mids = list(range(1, k))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(mids, [float(c[0, i]) for i in mids], "o-", label="start -> i")
    left.plot(mids, [float(c[i, k]) for i in mids], "s-", label="i -> end")
    left.plot(mids, [float(c[0, i] + c[i, k]) for i in mids], "^-", label="start -> i -> end")
    left.set_xlabel("intermediate grid index i")
    left.set_ylabel("distillation cost (Eq. 16)")
    left.legend()
    left.set_title("two-jump students")
    ms = sorted(best_paths)
    right.plot(ms, [best_paths[m]["cost"] for m in ms], "o-")
    for m in ms:
        right.annotate(str(best_paths[m]["path"]), (m, best_paths[m]["cost"]), fontsize=7,
                       textcoords="offset points", xytext=(4, 4))
    right.set_xlabel("student jumps M")
    right.set_ylabel("total cost of the best path")
    right.set_title("cost-selected steps")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def project_2d(trajectories):
    """PCA of all states of all trajectories (each ``[P, ...]``) to 2-D, fitted jointly; returns ``[P, 2]`` each."""
    flat = {k: v.reshape(v.shape[0], -1).double() for k, v in trajectories.items()}
    stacked = torch.cat(list(flat.values()))
    mean = stacked.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(stacked - mean, q=2, center=False)
    return {k: (x - mean) @ v[:, :2] for k, x in flat.items()}


def plot_trajectories(panels, path, title=""):
    """``panels``: list of ``(panel title, {label: states [P, ...]})``; each panel is projected on its own."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (name, trajectories) in zip(axes[0], panels):
        for label, xy in project_2d(trajectories).items():
            ax.plot(xy[:, 0], xy[:, 1], "o-", ms=3, label=label, alpha=0.85)
            ax.annotate("noise", xy[0].tolist(), fontsize=7)
        ax.set_title(name)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
