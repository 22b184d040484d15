#!/usr/bin/env python3
"""Where a GPU's time goes between kernels, from a kernel_trace timeline (benchmarks/tools/
kernel_trace.cpp: start_ns,end_ns,stream,kind,grid,name per kernel, copy and memset as they ran).

A step is the span between the ends of two consecutive launches of the --boundary kernel
(adamw_kernel, the default: one launch a training step). Per step: the span, the time some
activity ran (busy), the rest (idle: the GPU waiting for the next launch, the host or a read),
and the launches. Then, over the steps kept, the gaps between consecutive activities by the pair
of kernels around them (which transitions cost the most), and the largest single gaps. With
--by-kernel, first the busy time per step by kernel (--templates: instantiations apart, e.g. the
grouped GEMM's forward, dgrad and wgrad).

Usage: kernel_gaps.py TRACE.csv [--boundary REGEX] [--skip-steps N] [--top N] [--by-kernel [--templates]]
"""
import argparse
import csv
import re
import statistics
import sys
from collections import defaultdict

from ncu_kernel_table import short_name


def read_trace(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append((int(r["start_ns"]), int(r["end_ns"]), r["kind"], r["name"]))
    rows.sort()
    return rows


def label(kind, name):
    return short_name(name) if kind == "kernel" else name


def template_label(kind, name):
    """The kernel's name with its template arguments, without parameters, `void` and kiln's namespaces."""
    if kind != "kernel":
        return name
    name = name[5:] if name.startswith("void ") else name
    depth, cut = 0, len(name)
    for i, c in enumerate(name):  # the parameter list: the first "(" outside the template arguments
        depth += (c == "<") - (c == ">")
        if c == "(" and depth == 0:
            cut = i
            break
    return name[:cut].replace("kiln::kernels::", "").replace("kiln::", "")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace")
    parser.add_argument("--boundary", default="adamw_kernel")
    parser.add_argument("--skip-steps", type=int, default=2, help="steps left out at the start (warm-up)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by-kernel", action="store_true", help="busy time per step by kernel first")
    parser.add_argument("--templates", action="store_true", help="--by-kernel keeps template arguments apart")
    args = parser.parse_args()

    rows = read_trace(args.trace)
    if not rows:
        sys.exit(f"{args.trace}: no activities")
    boundary = re.compile(args.boundary)
    ends = [end for start, end, kind, name in rows if kind == "kernel" and boundary.search(name)]
    if len(ends) < args.skip_steps + 2:
        sys.exit(f"{args.trace}: {len(ends)} launches match --boundary {args.boundary!r}; "
                 f"need at least {args.skip_steps + 2} to keep one step")
    kept = list(zip(ends[args.skip_steps:-1], ends[args.skip_steps + 1:]))

    spans, busies, launches = [], [], []
    pair_gap = defaultdict(lambda: [0, 0.0])  # (before, after) -> [count, total ns]
    kernel_time = defaultdict(lambda: [0, 0.0])  # kernel -> [count, total ns of its own durations]
    largest = []
    i = 0
    for lo, hi in kept:
        while i < len(rows) and rows[i][0] < lo:
            i += 1
        busy, n, reach, before = 0, 0, lo, "(step boundary)"
        j = i
        while j < len(rows) and rows[j][0] < hi:
            start, end, kind, name = rows[j]
            entry = kernel_time[(template_label if args.templates else label)(kind, name)]
            entry[0] += 1
            entry[1] += end - start
            end = min(end, hi)
            if start > reach:
                gap = start - reach
                key = (before, label(kind, name))
                pair_gap[key][0] += 1
                pair_gap[key][1] += gap
                largest.append((gap, before, label(kind, name)))
            busy += max(0, end - max(start, reach))
            reach = max(reach, end)
            before = label(kind, name)
            n += 1
            j += 1
        spans.append(hi - lo)
        busies.append(busy)
        launches.append(n)

    steps = len(kept)
    span, busy, count = statistics.median(spans), statistics.median(busies), statistics.median(launches)
    print(f"{steps} steps (the first {args.skip_steps} left out), medians: span {span / 1e6:.3f} ms, "
          f"busy {busy / 1e6:.3f} ms ({100 * busy / span:.1f}%), idle {(span - busy) / 1e6:.3f} ms, "
          f"{count:.0f} activities, idle per activity {(span - busy) / 1e3 / max(count, 1):.2f} us")
    if args.by_kernel:
        total = sum(t for _, t in kernel_time.values())
        print(f"\nbusy time by kernel (own durations, per step; {total / 1e6 / steps:.3f} ms in all):")
        print(f"{'us':>9} {'count':>7} {'us each':>8} {'share':>6}  kernel")
        for name, (n, t) in sorted(kernel_time.items(), key=lambda kv: -kv[1][1])[:args.top]:
            print(f"{t / 1e3 / steps:>9.1f} {n / steps:>7.1f} {t / 1e3 / n:>8.1f} {100 * t / total:>5.1f}%  {name[:150]}")
    print(f"\ngaps by the pair of activities around them (over the {steps} steps; per step):")
    print(f"{'before':<40} {'after':<40} {'count':>7} {'us':>9} {'us each':>8}")
    for (a, b), (n, total) in sorted(pair_gap.items(), key=lambda kv: -kv[1][1])[:args.top]:
        per_step, each = total / 1e3 / steps, total / 1e3 / n
        print(f"{a[:40]:<40} {b[:40]:<40} {n / steps:>7.1f} {per_step:>9.1f} {each:>8.2f}")
    print("\nlargest single gaps:")
    for gap, a, b in sorted(largest, reverse=True)[:args.top]:
        print(f"  {gap / 1e3:9.1f} us  {a} -> {b}")


if __name__ == "__main__":
    main()
