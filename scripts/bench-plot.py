#!/usr/bin/env python3
"""Plots the element-level results of scripts/bench: buffers/s and p50/p99 latency
against frame size, qtisocketsink -> qtisocketsrc vs shmsink -> shmsrc.
usage: bench-plot.py results.json plot.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.load(open(sys.argv[1]))
names = {
    "Ours": "qtisocketsink → qtisocketsrc",
    "Shm": "shmsink → shmsrc (upstream in its memory)",
    "ShmCopy": "shmsink → shmsrc (frames copied in)",
}
fig, (rate, latency) = plt.subplots(1, 2, figsize=(12, 4.5))
for transport, style, color in (("Ours", "o-", "C0"), ("Shm", "s--", "C1"), ("ShmCopy", "^:", "C2")):
    runs = [r for r in results["elements"] if r["transport"] == transport]
    labels = [f'{r["width"]}x{r["height"]}' for r in runs]
    x = range(len(runs))
    if not runs:
        continue
    rate.plot(x, [r["recv"]["buffers"] / r["recv"]["seconds"] for r in runs], style, color=color, label=names[transport])
    latency.plot(x, [r["recv"]["p50_us"] for r in runs], style, color=color, label=names[transport] + " p50")
    latency.plot(x, [r["recv"]["p99_us"] for r in runs], style, color=color, alpha=0.35, label=names[transport] + " p99")
    for axis in (rate, latency):
        axis.set_xticks(list(x), labels)
rate.set_title("Throughput (two processes, NV12)")
rate.set_ylabel("buffers/s")
rate.set_yscale("log")
latency.set_title("Latency, sender push to receiver sink")
latency.set_ylabel("µs")
latency.set_yscale("log")
for axis in (rate, latency):
    axis.set_xlabel("frame size")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
fig.suptitle(results["machine"], fontsize=9)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
print(f"wrote {sys.argv[2]}")
