#!/usr/bin/env python3
"""Plot an R1 pipeline run (examples/r1_pipeline): held-out accuracy per model and the students' training.

    python3 scripts/plot_r1_pipeline.py RUN

Reads RUN/report.json (written by the pipeline's report stage) and the students' logs, and writes
under RUN/plots/:
    accuracy.png   pass@1 and cons@k of every model with their 95% intervals (error bars)
    students.png   the distilled students' validation loss (next-token CE on held-out traces)
                   against step, and the GRPO runs' mean reward against step (trailing mean)
For a run over several seeds (r1_pipeline --seeds; its report.json's settings list the seeds):
    seeds.png      every model's pass@1 at each seed (points) and their mean (bar, with its
                   standard error); each seed's own plots are in RUN/seed-N/plots/

Records of a step logged twice (a resumed stage) keep the last one. A missing report is an error;
a missing training log leaves its curve out with a note. Rendering uses matplotlib's Agg backend
(Debian: python3-matplotlib, installed by scripts/install-deps.sh).
"""
import json
import os
import sys


def read_jsonl(path):
    """The records of a JSON Lines file, or [] when it does not exist; an incomplete last line is skipped."""
    if not os.path.exists(path):
        print(f"plot_r1_pipeline: {path} not found, its curve is left out", file=sys.stderr)
        return []
    records = []
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                continue  # still being written
            raise SystemExit(f"plot_r1_pipeline: {path} line {number}: {e}")
    return records


def by_step(records, key):
    """(steps, values) of the records that carry `key`, the last record of a step winning."""
    points = {}
    for r in records:
        if key in r and r[key] is not None and "step" in r:
            points[r["step"]] = r[key]
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def trailing_mean(values, window):
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def save_model_axes(plt, fig, ax, names, ylabel, title, path):
    """Labels an accuracy chart with one slot per model (x = 0, 1, ...) and writes it to path."""
    ax.set_xticks(list(range(len(names))))
    ax.set_xticklabels(names, rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_seeds(report, out, plt):
    """The summary of a run over several seeds: pass@1 per model, a point per seed, the mean as a bar."""
    models = report["models"]
    seeds = [int(x) for x in report["settings"]["seeds"].split(",")]
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(models)), 4.5))
    x = list(range(len(models)))
    ax.bar(x, [m["mean"] for m in models], width=0.6, yerr=[m["error"] for m in models], capsize=3, color="#bbbbbb",
           label="mean (standard error)")
    for j, seed in enumerate(seeds):
        offset = (j - (len(seeds) - 1) / 2) * 0.12
        ax.plot([i + offset for i in x], [m["pass_at_1"][j] for m in models], "o", label=f"seed {seed}")
    save_model_axes(plt, fig, ax, [m["model"] for m in models], "held-out pass@1", f"{len(seeds)} seeds",
                    os.path.join(out, "seeds.png"))


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    run = sys.argv[1]
    report_path = os.path.join(run, "report.json")
    if not os.path.exists(report_path):
        raise SystemExit(f"plot_r1_pipeline: {report_path} not found (run the pipeline's report stage first)")
    with open(report_path, encoding="utf-8") as f:
        report = json.load(f)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = os.path.join(run, "plots")
    os.makedirs(out, exist_ok=True)
    if report["settings"].get("seeds"):
        plot_seeds(report, out, plt)
        return

    models = report["models"]
    names = [m["model"] for m in models]
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(names)), 4.5))
    x = range(len(names))
    for offset, key, label in ((-0.18, "pass_at_1", "pass@1"), (0.18, "cons_at_k", f"cons@{models[0]['k']}")):
        est = [m[key]["estimate"] for m in models]
        lo = [m[key]["estimate"] - m[key]["lo"] for m in models]
        hi = [m[key]["hi"] - m[key]["estimate"] for m in models]
        ax.bar([i + offset for i in x], est, width=0.36, yerr=[lo, hi], capsize=3, label=label)
    save_model_axes(plt, fig, ax, names, "held-out accuracy (95% interval)",
                    f"{models[0]['problems']} held-out problems", os.path.join(out, "accuracy.png"))

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind in ("sft", "kd", "onpolicy"):
        steps, values = by_step(read_jsonl(os.path.join(run, f"student-{kind}", "metrics.jsonl")), "val_loss")
        if steps:
            left.plot(steps, values, marker="o", label=f"student-{kind}")
    left.set_xlabel("optimizer step")
    left.set_ylabel("validation CE on held-out traces")
    left.set_title("distilled students")
    left.legend()
    for name in ("teacher", "student-grpo"):
        steps, values = by_step(read_jsonl(os.path.join(run, name, "metrics.jsonl")), "reward_mean")
        if steps:
            right.plot(steps, trailing_mean(values, max(3, len(values) // 10)), label=f"{name} (GRPO)")
    right.set_xlabel("GRPO step")
    right.set_ylabel("mean reward (trailing mean)")
    right.set_title("GRPO runs")
    right.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "students.png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
