#!/usr/bin/env python3
"""Python receiver against the C receiver and against GStreamer's appsink with a numpy
copy, at 1920x1080 NV12: buffers/s and latency p50, one sender for all.

    python/bench/run            # builds what it needs, then runs this

The sender (python/bench/c_sender.c, the C API in its own process, so that the
receivers and not the sender are measured) sends pooled memfds and stamps
CLOCK_MONOTONIC into each frame's first 8 bytes just before it sends; each receiver
reads the stamp when it has the frame in hand:

- python: qsock.Receiver, `buf.planes()` (read-only numpy views, no copy), the stamp
  read from the Y array, the last byte of UV touched, the buffer and arrays dropped;
- c: the C API (`qsock_receiver_recv_buffer`, mmap once per pooled fd, read, release),
  python/bench/c_receiver.c;
- appsink: `qtisocketsrc ! appsink` in a PyGObject pipeline, `pull_sample()`,
  `buffer.map()` (PyGObject hands out the mapped bytes as a `bytes` copy) and
  `numpy.frombuffer`: the usual way to get frames into numpy through GStreamer.

Two runs per receiver: "throughput" with 4 frames in flight (the sender refills as
returns come), and "latency" with 1 in flight (send, wait for the return, send again),
whose p50 is the one-way time without queueing (appsink keeps its first buffer as its
preroll buffer for good: the sender gets one more memfd there).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def stamp(array):
    return int.from_bytes(array[0, :8].tobytes(), "little")


def python_receiver(socket, frames):
    import qsock

    latency, first, last, checksum = [], 0, 0, 0
    with qsock.Receiver(socket, timeout=30) as rx:
        print("ready", flush=True)
        for buf in rx:
            y, uv = buf.planes()
            now = time.monotonic_ns()
            latency.append(now - stamp(y))
            checksum += int(uv[-1, -1, -1])
            first = first or now
            last = now
            del buf, y, uv
            if len(latency) == frames:
                break
    return {"buffers": len(latency), "seconds": (last - first) / 1e9, "latency_ns": latency}


def appsink_receiver(socket, frames):
    import gi
    import numpy as np

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    pipeline = Gst.parse_launch(f"qtisocketsrc socket={socket} ! appsink name=sink sync=false max-buffers=4 enable-last-sample=false")
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    print("ready", flush=True)
    latency, first, last = [], 0, 0
    while len(latency) < frames:
        sample = sink.emit("try-pull-sample", 30 * Gst.SECOND)
        if sample is None:
            break
        buffer = sample.get_buffer()
        ok, info = buffer.map(Gst.MapFlags.READ)
        frame = np.frombuffer(info.data, np.uint8)  # info.data: a bytes copy of the frame
        buffer.unmap(info)
        del info
        now = time.monotonic_ns()
        latency.append(now - int.from_bytes(frame[:8].tobytes(), "little"))
        first = first or now
        last = now
        del sample, buffer, frame
    pipeline.set_state(Gst.State.NULL)
    return {"buffers": len(latency), "seconds": (last - first) / 1e9, "latency_ns": latency}


def run_pair(options, receiver_command, socket, frames, width, height, in_flight, env):
    """Starts the receiver, then the sender; returns the receiver's figures."""
    receiver = subprocess.Popen(receiver_command, stdout=subprocess.PIPE, env=env, text=True)
    if receiver_command[-1] == "--announce":
        assert receiver.stdout.readline().strip() == "ready"
    send = subprocess.Popen([options.c_sender, socket, str(frames), str(width), str(height), str(in_flight)], env=env)
    out, _ = receiver.communicate(timeout=600)
    send.wait(timeout=60)
    if receiver.returncode != 0:
        raise SystemExit(f"receiver {receiver_command[:3]} failed")
    return json.loads(out.strip().splitlines()[-1])


def summary(result):
    latencies = sorted(result["latency_ns"])
    return {
        "buffers": result["buffers"],
        "buffers_per_s": (result["buffers"] - 1) / result["seconds"] if result["seconds"] else float("nan"),
        "p50_us": statistics.median(latencies) / 1000,
        "p99_us": latencies[int(len(latencies) * 0.99) - 1] / 1000,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", default="main", choices=["main", "python", "appsink"])
    parser.add_argument("args", nargs="*")
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--appsink-frames", type=int, default=600)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--c-receiver", default=str(REPO / "target" / "bench" / "c_receiver"))
    parser.add_argument("--c-sender", default=str(REPO / "target" / "bench" / "c_sender"))
    parser.add_argument("--build-dir", default=str(REPO / "target" / "release"))
    parser.add_argument("--json", help="write the figures here too")
    options, _ = parser.parse_known_args()
    if options.role in ("python", "appsink"):
        socket, frames = options.args[:2]
        result = (python_receiver if options.role == "python" else appsink_receiver)(socket, int(frames))
        print(json.dumps(result))
        return

    env = dict(os.environ, GST_PLUGIN_PATH=options.build_dir, LD_LIBRARY_PATH=options.build_dir)
    directory = tempfile.mkdtemp(prefix="qsock-bench-", dir="/tmp")
    me = [sys.executable, __file__]
    receivers = {
        "python (qsock.Receiver, numpy views)": lambda s, n: me + ["--role", "python", s, str(n), "--announce"],
        "c (qsock_receiver_*, mmap)": lambda s, n: [options.c_receiver, s, str(n)],
        "appsink + numpy.frombuffer (copy)": lambda s, n: me + ["--role", "appsink", s, str(n), "--announce"],
    }
    figures = {}
    for name, command in receivers.items():
        frames = options.appsink_frames if name.startswith("appsink") else options.frames
        for run, in_flight in (("throughput", 4), ("latency", 1)):
            if name.startswith("appsink") and run == "latency":
                # appsink keeps its preroll buffer (the first) for good: one more memfd
                # in the pool, so that one still goes back and forth.
                in_flight = 2
            socket = os.path.join(directory, f"{len(figures)}.sock")
            result = run_pair(options, command(socket, frames), socket, frames, options.width, options.height, in_flight, env)
            figures[f"{name} / {run}"] = summary(result)
            print(f"{name:40s} {run:10s} {json.dumps(figures[f'{name} / {run}'])}", flush=True)
    width, height = options.width, options.height
    print(f"\n{width}x{height} NV12, one C sender (python/bench/c_sender.c) in another process")
    print("| receiver | buffers/s (4 in flight) | p50 latency (1 in flight) | p50 (4 in flight) |")
    print("|---|---|---|---|")
    for name in receivers:
        t, l = figures[f"{name} / throughput"], figures[f"{name} / latency"]
        print(f"| {name} | {t['buffers_per_s']:,.0f} | {l['p50_us']:,.0f} µs | {t['p50_us']:,.0f} µs |")
    if options.json:
        Path(options.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
