"""Budgets of ``zfscratch run`` (the ``default`` and ``quick`` profiles) and the data spec they imply."""
from __future__ import annotations

#: budgets of the two modes; every number here is part of the stage hashes
PROFILES = {
    "default": dict(
        size=48, n_train=3000, n_val=300, n_test=300, classes="face+house+car+flower+star+tree", max_angle=30,
        epochs=6, batch=32, lr=0.02, dropout=0.0, snapshots=(0, 1, 2, 3, 4, 6),
        topk_images=300, topk_maps=8, evolution_images=150, evolution_maps=1,
        reconstruct_images=4, reconstruct_eval=200, occlusion_images=3, occlusion_stride=2,
        invariance_images=5, invariance_eval=30, correspondence_images=5, correspondence_groups=3,
        layerwise_train=1500, layerwise_test=300, layerwise_epochs=8, arch_probe=64,
    ),
    "quick": dict(
        size=48, n_train=600, n_val=120, n_test=120, classes="face+house+car+flower+star+tree", max_angle=30,
        epochs=3, batch=32, lr=0.02, dropout=0.0, snapshots=(0, 1, 3),
        topk_images=120, topk_maps=4, evolution_images=60, evolution_maps=1,
        reconstruct_images=2, reconstruct_eval=60, occlusion_images=1, occlusion_stride=4,
        invariance_images=2, invariance_eval=10, correspondence_images=4, correspondence_groups=2,
        layerwise_train=300, layerwise_test=120, layerwise_epochs=4, arch_probe=16,
    ),
}
#: why the run's data and recipe differ from the paper's (shown in the report)
BUDGET_NOTE = ("To fit a few CPU minutes the run uses 6 of the 10 synthetic classes, rotations within "
               "+-30 degrees, 48x48 inputs and no dropout; the architecture, SGD recipe (momentum, weight decay, "
               "filter renormalization, lr annealing on plateau) and every experiment are the paper's.")


def data_spec(data, profile):
    """The data spec of a run: ``--data`` as given (folder and synthetic images at the profile's input
    size unless the spec says otherwise), or the embedded synthetic data at the profile's size and counts."""
    p = PROFILES[profile]
    if not data:
        extra = "".join(f",{k}={p[k]}" for k in ("classes", "max_angle") if p.get(k) is not None)
        return f"synthetic:n={p['n_train']},n_val={p['n_val']},n_test={p['n_test']},size={p['size']}{extra}"
    from zfscratch.data import parse_spec
    kind, _, opts = parse_spec(data)
    if kind in ("folder", "synthetic") and "size" not in opts:
        sep = "," if ":" in data else ":"
        return f"{data}{sep}size={p['size']}"
    return data
