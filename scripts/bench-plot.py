#!/usr/bin/env python3
"""Plots the results of scripts/bench: buffers/s and p50/p99 latency against frame
size, qtisocketsink -> qtisocketsrc vs shmsink -> shmsrc; and the fan-out: buffers/s
delivered to all receivers against their number, socket-dir vs tee vs unixfdsink (from
the GStreamer 1.26 run, when its results are given).
usage: bench-plot.py results.json plot.png [newest-gst.json]"""
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
newest = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else {}
fig, (rate, latency, fan) = plt.subplots(1, 3, figsize=(18, 4.5))
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
fan_outs = (
    ("SocketDir", results.get("fan_out", []), "o-", "C0", "qtisocketsink socket-dir"),
    ("Tee", results.get("fan_out", []), "s--", "C3", "tee ! N × qtisocketsink"),
    ("UnixFd", newest.get("fan_out", []), "^:", "C4", "unixfdsink → N unixfdsrc (GStreamer 1.26)"),
    ("SocketDir", newest.get("fan_out", []), "o-.", "C9", "qtisocketsink socket-dir (GStreamer 1.26)"),
)
for kind, runs, style, color, label in fan_outs:
    runs = [r for r in runs if r["kind"] == kind and not r["with_stuck"]]
    if runs:
        fan.plot([r["receivers"] for r in runs], [r["aggregate_per_second"] for r in runs], style, color=color, label=label)
fan.set_title("Fan-out at 1920x1080, every receiver gets every frame")
fan.set_ylabel("buffers/s delivered, all receivers")
fan.set_xlabel("receivers (processes)")
fan.set_xscale("log", base=2)
fan.set_yscale("log")
fan.grid(True, alpha=0.3)
fan.legend(fontsize=8)
for axis in (rate, latency):
    axis.set_xlabel("frame size")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
fig.suptitle(results["machine"], fontsize=9)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=100)
print(f"wrote {sys.argv[2]}")
