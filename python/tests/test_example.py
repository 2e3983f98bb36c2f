"""The README's example, examples/brightness.py, against qtisocketsink in gst-launch-1.0."""

import subprocess
import sys
from pathlib import Path

from conftest import gst_env, require_gst, spawn

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "brightness.py"


def test_brightness_example(sock):
    require_gst()
    example = spawn(
        [sys.executable, str(EXAMPLE), sock], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert example.stderr.readline().startswith("listening on")
    sender = subprocess.run(
        ["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=5", "pattern=white", "!",
         "video/x-raw,format=NV12,width=320,height=240", "!", "qtisocketsink", f"socket={sock}",
         "wait-for-receiver=true"],
        env=gst_env(), capture_output=True, text=True, timeout=60,
    )
    assert sender.returncode == 0, sender.stdout + sender.stderr
    out, err = example.communicate(timeout=30)
    assert example.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 5, out
    # videotestsrc's white is Y = 235 (video range).
    assert all(line.endswith("NV12 320x240  brightness 235.00") for line in lines), out
    assert lines[0].split()[0] == "0.000"
