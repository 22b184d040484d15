#!/usr/bin/env python3
"""Plot a GRPO run's metrics: reward, response length, KL and entropy against step.

    python3 scripts/plot_grpo.py RUN/metrics.jsonl OUTDIR

Reads the trainer's JSON Lines log (one object per optimizer step; keys such as step,
reward_mean, reward_std, reward/<fn>/mean, completion_len_mean, completion_len_max, kl, entropy)
and writes, under OUTDIR (created if needed):
    grpo.png              the four panels together
    reward.png, response_length.png, kl.png, entropy.png   each panel on its own

Step-to-step values are noisy (a step sees 16 or so problems): from 40 steps on, each curve is
drawn faintly and its trailing mean over max(5, steps / 20) steps on top, which shows the trend.

A panel whose key appears in no record is drawn with a note instead of a curve, and its own file is
not written. null values (the writer's spelling of NaN) are gaps. When a step appears more than
once (a run resumed from a checkpoint re-logs the steps after it) the last record wins. A missing
file, a malformed line or a non-numeric value is an error naming the line; an incomplete last line
(the run is still writing it) is skipped with a note.

Rendering goes through matplotlib's Agg backend (no display needed). Debian/Ubuntu:
python3-matplotlib, installed by scripts/install-deps.sh.
"""
import argparse
import json
import math
import os
import sys


class MetricsError(Exception):
    pass


def load_records(path):
    """The records of a JSONL file, keyed by step (the last record of a step wins), in step order."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise MetricsError(f"{path}: cannot read: {e.strerror or e}")
    lines = text.split("\n")
    complete = text.endswith("\n") or text == ""
    by_step = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_last = number == len(lines)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if is_last and not complete:
                print(f"note: {path}:{number}: skipping the incomplete last line (still being written?)",
                      file=sys.stderr)
                continue
            raise MetricsError(f"{path}:{number}: malformed JSON: {e.msg} (column {e.colno})")
        if not isinstance(record, dict):
            raise MetricsError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise MetricsError(f"{path}:{number}: missing or non-numeric \"step\" (got {step!r})")
        for key, value in record.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                if key == "step" or not _plotted(key):
                    continue  # other keys may hold anything; only plotted ones must be numbers
                raise MetricsError(f"{path}:{number}: \"{key}\" is not a number (got {value!r})")
        by_step[step] = (number, record)
    if not by_step:
        raise MetricsError(f"{path}: no records")
    return [by_step[s][1] for s in sorted(by_step)]


def _plotted(key):
    return key in PLOTTED_KEYS or (key.startswith("reward/") and key.endswith("/mean"))


# Each panel: output name, title, y label, and the series (key, label) it draws. The reward panel
# also draws every reward/<fn>/mean found, and shades reward_mean ± reward_std.
PANELS = [
    ("reward", "Reward", "reward", [("reward_mean", "mean")]),
    ("response_length", "Response length", "tokens",
     [("completion_len_mean", "mean"), ("completion_len_max", "max")]),
    ("kl", "KL to the reference (k3)", "nats / token", [("kl", "kl")]),
    ("entropy", "Policy entropy", "nats / token", [("entropy", "entropy")]),
]
PLOTTED_KEYS = {key for _, _, _, series in PANELS for key, _ in series} | {"reward_std"}


def column(records, key):
    """(steps, values) where `key` is present; null becomes NaN, which matplotlib leaves as a gap."""
    steps, values = [], []
    for r in records:
        if key in r:
            steps.append(r["step"])
            values.append(float("nan") if r[key] is None else float(r[key]))
    return steps, values


def trailing_mean(values, window):
    """Mean of the last `window` finite values up to each point (NaN where there are none)."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        out.append(sum(recent) / len(recent) if recent else float("nan"))
    return out


SMOOTH_FROM = 40  # steps from which curves get a trailing mean


def draw_panel(ax, records, panel):
    """Draws one panel on `ax`; returns the keys it found (empty: nothing to plot)."""
    name, title, ylabel, series = panel
    series = list(series)
    if name == "reward":
        fns = sorted({k for r in records for k in r if k.startswith("reward/") and k.endswith("/mean")})
        series += [(k, k[len("reward/"):-len("/mean")]) for k in fns]
    found = []
    for key, label in series:
        steps, values = column(records, key)
        if not steps:
            continue
        found.append(key)
        main = key == series[0][0]
        if len(steps) >= SMOOTH_FROM:
            window = max(5, len(steps) // 20)
            (line,) = ax.plot(steps, values, linewidth=0.8, alpha=0.3)
            ax.plot(steps, trailing_mean(values, window), color=line.get_color(), label=f"{label} ({window}-step mean)",
                    linewidth=1.8 if main else 1.3)
        else:
            ax.plot(steps, values, label=label, linewidth=1.6 if main else 1.0, alpha=1.0 if main else 0.8)
        if key == "reward_mean":
            s_steps, s_values = column(records, "reward_std")
            std = dict(zip(s_steps, s_values))
            if std:
                lo = [v - std.get(s, float("nan")) for s, v in zip(steps, values)]
                hi = [v + std.get(s, float("nan")) for s, v in zip(steps, values)]
                ax.fill_between(steps, lo, hi, alpha=0.12 if len(steps) >= SMOOTH_FROM else 0.2, label="± std")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if found:
        if len(found) > 1 or name == "reward":
            ax.legend(fontsize="small")
    else:
        keys = ", ".join(k for k, _ in series)
        ax.text(0.5, 0.5, f"no {keys} in the metrics", ha="center", va="center", transform=ax.transAxes,
                color="gray")
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="the run's metrics.jsonl")
    parser.add_argument("outdir", help="directory for the PNG files")
    parser.add_argument("--dpi", type=int, default=120)
    args = parser.parse_args(argv)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"error: matplotlib is not installed for {sys.executable}; install python3-matplotlib "
              "(scripts/install-deps.sh) or run this script with the interpreter that has it",
              file=sys.stderr)
        return 2

    try:
        records = load_records(args.metrics)
    except MetricsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    os.makedirs(args.outdir, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    any_found = False
    for ax, panel in zip(axes.flat, PANELS):
        if draw_panel(ax, records, panel):
            any_found = True
        else:
            print(f"note: no {panel[3][0][0]} in {args.metrics}: the {panel[0]} panel is empty", file=sys.stderr)
    if not any_found:
        plt.close(fig)
        print(f"error: {args.metrics} has none of the plotted keys ({', '.join(sorted(PLOTTED_KEYS))})",
              file=sys.stderr)
        return 1
    fig.suptitle(f"GRPO: {args.metrics} ({len(records)} steps)")
    fig.tight_layout()
    written = [os.path.join(args.outdir, "grpo.png")]
    fig.savefig(written[0], dpi=args.dpi)
    plt.close(fig)

    for panel in PANELS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if draw_panel(ax, records, panel):
            fig.tight_layout()
            written.append(os.path.join(args.outdir, panel[0] + ".png"))
            fig.savefig(written[-1], dpi=args.dpi)
        plt.close(fig)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
