#!/usr/bin/env python3
"""Summarises an Nsight Compute CSV (ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum,
dram__bytes_write.sum ...) per kernel: launches, GPU time, DRAM bytes and the bandwidth they ran at,
then the longest launches of the kernels whose name matches --detail (each with its grid and GB/s).

Usage: ncu_kernel_table.py PROFILE.csv [--skip-launches N | --second-half] [--detail REGEX] [--top N]
--skip-launches drops the first N launches (e.g. the first training step's, to keep a later one);
--second-half drops the first half (of a two-step run, about the first step).
The bandwidth of a launch is (read + write DRAM bytes) / duration: a copy near the card's copy
rate (about 3.0 TB/s on an H100, 4.3 on an H200) is memory-bound and done; far below, not.
"""
import argparse
import csv
import re
import sys
from collections import defaultdict


def short_name(name):
    """The kernel's function name without namespaces, template arguments or parameters,
    plus the functor of the elementwise map kernels (map_rows<ConvertTo<bf16>> -> map_rows ConvertTo)."""
    base = re.sub(r"\(.*$", "", name)
    head = re.sub(r"<.*$", "", base).split("::")[-1].split(" ")[-1]
    if head.startswith("map_"):
        functor = re.search(r"(ConvertTo|Constant|RoundFromDouble|[A-Z][A-Za-z]+Op|[A-Z][A-Za-z]+)<", base)
        if functor:
            head += " " + functor.group(1)
    return head


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv")
    parser.add_argument("--skip-launches", type=int, default=0)
    parser.add_argument("--second-half", action="store_true")
    parser.add_argument("--detail", default=r"^map_")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    launches = {}  # id -> dict
    with open(args.csv, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu prints its own log lines first
    for row in csv.DictReader(lines):
        try:
            launch_id = int(row["ID"])
        except (KeyError, ValueError):
            continue
        entry = launches.setdefault(launch_id, {"name": row.get("Kernel Name", "?"), "grid": row.get("Grid Size", ""),
                                                "block": row.get("Block Size", ""), "ns": 0.0, "bytes": 0.0})
        value = float(row["Metric Value"].replace(",", "") or 0)
        unit = row.get("Metric Unit", "")
        metric = row["Metric Name"]
        if metric == "gpu__time_duration.sum":
            entry["ns"] = value * {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9}.get(unit, 1)
        elif metric.startswith("dram__bytes"):
            entry["bytes"] += value * {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(unit, 1)
    if not launches:
        sys.exit(f"{args.csv}: no ncu metric rows")
    skip = len(launches) // 2 if args.second_half else args.skip_launches
    kept = [launches[i] for i in sorted(launches)][skip:]

    per_kernel = defaultdict(lambda: {"n": 0, "ns": 0.0, "bytes": 0.0})
    for e in kept:
        k = per_kernel[short_name(e["name"])]
        k["n"] += 1
        k["ns"] += e["ns"]
        k["bytes"] += e["bytes"]
    total_ns = sum(k["ns"] for k in per_kernel.values())
    print(f"{len(kept)} launches, {total_ns / 1e6:.3f} ms of GPU time")
    print(f"{'kernel':<44} {'launches':>8} {'ms':>9} {'share':>6} {'GB':>8} {'GB/s':>8}")
    for name, k in sorted(per_kernel.items(), key=lambda item: -item[1]["ns"]):
        gbs = k["bytes"] / k["ns"] if k["ns"] else 0.0  # bytes per ns = GB/s
        print(f"{name[:44]:<44} {k['n']:>8} {k['ns'] / 1e6:>9.3f} {100 * k['ns'] / total_ns:>5.1f}% "
              f"{k['bytes'] / 1e9:>8.3f} {gbs:>8.0f}")

    detail = re.compile(args.detail)
    chosen = [e for e in kept if detail.search(short_name(e["name"]))]
    print(f"\nthe {args.top} longest launches matching {args.detail!r} (of {len(chosen)})")
    print(f"{'kernel':<30} {'grid':>16} {'us':>9} {'MB':>9} {'GB/s':>8}")
    for e in sorted(chosen, key=lambda e: -e["ns"])[: args.top]:
        gbs = e["bytes"] / e["ns"] if e["ns"] else 0.0
        name = short_name(e["name"])[:30]
        print(f"{name:<30} {e['grid']:>16} {e['ns'] / 1e3:>9.1f} {e['bytes'] / 1e6:>9.2f} {gbs:>8.0f}")


if __name__ == "__main__":
    main()
