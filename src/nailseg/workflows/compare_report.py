"""What ``nailseg compare`` writes: ``compare.json``, the two charts and ``report.md``.

Kept apart from the workflow that trains and scores (``workflows/compare.py``): this part only
lays out rows that are already measured."""

from __future__ import annotations

import os
from pathlib import Path

from nailseg.core.io import write_json, write_text


def write_outputs(rows: list[dict], out: Path, *, title: str, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", [{k: v for k, v in r.items() if k not in ("per_image", "curve")} for r in rows])
    plot_compare(rows, out / "compare.png", title)
    plot_curves(rows, out / "curves.png", title)
    write_text(out / "report.md", report_markdown(rows, out, title, command))


def plot_compare(rows: list[dict], path: Path, title: str) -> None:
    from nailseg.core.optional import pyplot

    plt = pyplot("the comparison charts")

    from nailseg.core.io import atomic_path

    ok = [r for r in rows if "error" not in r]
    names = [r["config"] for r in ok]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(7, 1.6 * len(ok) + 4), 3.8), dpi=110)
    ious = [r.get("iou_mean", r["iou"]) for r in ok]
    err = [r.get("iou_sd", 0.0) for r in ok]
    bars = a.bar(range(len(ok)), ious, yerr=err, capsize=4, color="#3b7dd8")
    a.bar_label(bars, labels=[f"{v:.3f}" for v in ious], fontsize=8)
    a.set_ylabel("IoU (original resolution)" + (" mean ± sd over folds" if any("iou_sd" in r for r in ok) else ""))
    a.set_ylim(0, 1)
    speeds = [r.get("images_per_s") or 0 for r in ok]
    bars = b.bar(range(len(ok)), speeds, color="#e08a2c")
    b.bar_label(bars, labels=[f"{v:.1f}" for v in speeds], fontsize=8)
    b.set_ylabel("training images / s")
    for ax in (a, b):
        ax.set_xticks(range(len(ok)), names, rotation=15, ha="right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    from nailseg.core.optional import pyplot

    plt = pyplot("the comparison charts")

    from nailseg.core.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for r in rows:
        curve = r.get("curve") or []
        points = [(i, v) for i, v in enumerate(curve) if v is not None]
        if points:
            ax.plot(*zip(*points), label=f"{r['config']} ({r.get('stack')})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation IoU (model resolution)")
    ax.set_ylim(0, 1)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def _class_table(rows: list[dict], folds: bool) -> list[str]:
    """Many-class rows: each class's IoU (the mean over the folds it appears in), where "iou" is the mIoU."""
    classed = [r for r in rows if r.get("per_class_iou")]
    if not classed:
        return []
    names = list(classed[0]["per_class_iou"])
    lines = ["", "IoU per class" + (" (mean over the folds where the class appears)" if folds else "") +
             "; the iou column above is their mean (mIoU):", "",
             "| config | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    lines += [f"| {r['config']} | " + " | ".join(_cell(r["per_class_iou"].get(n)) for n in names) + " |"
              for r in classed]
    return lines


def report_markdown(rows: list[dict], out: Path, title: str, command: str) -> str:
    folds = any("iou_mean" in r for r in rows)
    cols = ["config", "stack", "family", "arch", "encoder", "params", "iou"] + (["iou_sd", "folds"] if folds else []) \
        + ["dice", "precision", "recall", "images_per_s", "wall_time_s", "peak_memory_mb", "epochs", "pipeline"]
    lines = [f"# Comparison: {title}", "", f"Command: `{command}`", "",
             "IoU, Dice, precision and recall are micro scores at each image's original resolution, from the "
             "shared evaluation" + (" (the mean over folds; each fold scored on its held-out images)." if folds
                                    else " on the same held-out images for every config."), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r.get('stack', '')} | failed: {r['error']} |")
            continue
        lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    if folds:
        lines += ["", "Per-fold IoU:", ""]
        lines += [f"- {r['config']}: " + ", ".join(_cell(v) for v in r.get("fold_ious", [])) for r in rows]
    lines += _class_table(rows, folds)
    lines += ["", "![IoU and training speed](compare.png)", "", "![validation IoU per epoch](curves.png)", "",
              "## Worst five images per config", "",
              "Overlays: true positives green, false positives red, false negatives blue; the IoU in the corner.", ""]
    for r in rows:
        if "error" in r or not r.get("per_image"):
            continue
        worst = sorted(r["per_image"], key=lambda p: p["iou"])[:5]
        lines.append(f"### {r['config']}")
        lines.append("")
        runs = r.get("runs") or [r.get("run")]
        for p in worst:
            name = Path(p["key"]).with_suffix("").as_posix().replace("/", "__") + ".png"
            found = next((Path(run) / "overlays" / name for run in runs if (Path(run) / "overlays" / name).exists()),
                         None)
            rel = os.path.relpath(found, out) if found else None
            lines.append(f"- `{p['key']}` IoU {p['iou']:.3f}" + (f"<br>![{p['key']}]({rel})" if rel else ""))
        lines.append("")
    return "\n".join(lines) + "\n"
