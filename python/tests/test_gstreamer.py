"""Python beside our GStreamer elements in other processes: receiving from qtisocketsink
in gst-launch-1.0 (videotestsrc frames equal to the same frames written by filesink, no
copy on either side), and sending to qtisocketsrc in a gst-launch-1.0 pipeline (the
bytes filesink writes equal to what Python sent)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import qsock
from conftest import gst_env, mappings, require_gst, spawn

WIDTH, HEIGHT, FRAMES = 320, 240, 30
CAPS = f"video/x-raw,format=NV12,width={WIDTH},height={HEIGHT},framerate=30/1"
FRAME_BYTES = WIDTH * HEIGHT * 3 // 2


def launch(pipeline):
    require_gst()
    return spawn(
        ["gst-launch-1.0", "-q", *pipeline.split()],
        env=gst_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def reference_frames(tmp_path):
    """The same videotestsrc frames, written raw by filesink in this layout."""
    out = tmp_path / "reference.nv12"
    child = launch(f"videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! filesink location={out}")
    log, _ = child.communicate(timeout=60)
    assert child.returncode == 0, log
    data = np.fromfile(out, np.uint8)
    assert data.size == FRAMES * FRAME_BYTES
    return data.reshape(FRAMES, FRAME_BYTES)


def test_receiving_from_qtisocketsink_in_gst_launch(receiver, sock, tmp_path):
    reference = reference_frames(tmp_path)
    sender = launch(
        f"videotestsrc num-buffers={FRAMES} pattern=ball ! {CAPS} ! qtisocketsink socket={sock} wait-for-receiver=true"
    )
    received = 0
    for i, buf in enumerate(receiver):  # ends at the sink's EOS
        info = buf.video
        assert (info.format, info.width, info.height) == ("NV12", WIDTH, HEIGHT)
        assert buf.pts == i * 1_000_000_000 // 30  # videotestsrc at 30/1
        y, uv = buf.planes()
        expected = reference[i]
        assert np.array_equal(y, expected[: WIDTH * HEIGHT].reshape(HEIGHT, WIDTH)), f"frame {i}: Y differs"
        assert np.array_equal(uv, expected[WIDTH * HEIGHT :].reshape(HEIGHT // 2, WIDTH // 2, 2)), f"frame {i}: UV differs"
        # Zero-copy: Y lies in a mapping of the sink's own memfd (the inode behind our fd).
        start = y.__array_interface__["data"][0]
        [(lo, hi, inode, path)] = [m for m in mappings() if m[0] <= start < m[1]]
        assert inode == os.fstat(buf.fd()).st_ino and path.startswith("/memfd:"), path
        received += 1
    del buf, y, uv
    assert received == FRAMES
    log, _ = sender.communicate(timeout=30)
    assert sender.returncode == 0, log


SINK_STATS = textwrap.dedent(
    """
    import sys
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    pipeline = Gst.parse_launch(sys.argv[1])
    pipeline.set_state(Gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    assert message is not None and message.type == Gst.MessageType.EOS, message
    stats = pipeline.get_by_name("sink").get_property("stats")
    pipeline.set_state(Gst.State.NULL)
    for field in ("buffers-sent", "copies", "bytes-copied", "bytes-described"):
        print(field, stats.get_value(field))
    """
)


def test_videotestsrc_writes_into_the_sinks_memfds_no_copy_anywhere(receiver, sock):
    pytest.importorskip("gi", reason="python3-gi (scripts/setup installs it)")
    require_gst()
    pipeline = (
        f"videotestsrc num-buffers={FRAMES} ! {CAPS} ! qtisocketsink name=sink socket={sock} wait-for-receiver=true"
    )
    child = spawn([sys.executable, "-c", SINK_STATS, pipeline], env=gst_env(), stdout=subprocess.PIPE, text=True)
    means = [float(buf.planes()[0].mean()) for buf in receiver]
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0, out
    stats = dict(line.split() for line in out.splitlines())
    assert len(means) == FRAMES and stats["buffers-sent"] == str(FRAMES)
    assert stats["copies"] == "0" and stats["bytes-copied"] == "0", stats
    assert stats["bytes-described"] == str(FRAMES * FRAME_BYTES)


def test_sending_to_qtisocketsrc_in_gst_launch(sock, tmp_path):
    out = tmp_path / "received.nv12"
    receiver = launch(f"qtisocketsrc socket={sock} ! {CAPS} ! filesink location={out}")
    rng = np.random.default_rng(7)
    sent = []
    with qsock.Sender(sock, connect_timeout=20) as tx:
        for i in range(FRAMES):
            y = rng.integers(0, 256, (HEIGHT, WIDTH), np.uint8)
            uv = rng.integers(0, 256, (HEIGHT // 2, WIDTH // 2, 2), np.uint8)
            if i % 2:
                tx.send_video([y, uv], pts=i * 33_333_333, duration=33_333_333)
            else:
                with tx.frame(WIDTH, HEIGHT, "NV12", pts=i * 33_333_333, duration=33_333_333) as frame:
                    fy, fuv = frame.planes()
                    fy[:], fuv[:] = y, uv
                del fy, fuv
            sent.append(np.concatenate([y.reshape(-1), uv.reshape(-1)]))
        tx.eos()
        log, _ = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, log
        tx.flush()
        stats = tx.stats()
    assert stats["buffers_sent"] == FRAMES and stats["in_flight"] == 0
    assert stats["copies"] == FRAMES // 2 and stats["bytes_in_place"] == FRAMES // 2 * FRAME_BYTES
    written = np.fromfile(out, np.uint8)
    assert written.size == FRAMES * FRAME_BYTES
    for i, frame in enumerate(written.reshape(FRAMES, FRAME_BYTES)):
        assert np.array_equal(frame, sent[i]), f"frame {i} differs"


def test_sending_tensors_and_text_to_qtisocketsrc(sock, tmp_path):
    out = tmp_path / "tensors.raw"
    receiver = launch(f"qtisocketsrc socket={sock} ! filesink location={out}")
    tensors = [np.arange(i, i + 48, dtype=np.uint8).reshape(1, 4, 4, 3) for i in range(5)]
    with qsock.Sender(sock, connect_timeout=20) as tx:
        for i, t in enumerate(tensors):
            tx.send_tensors([t], pts=i)
        tx.eos()
        log, _ = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, log
    assert np.array_equal(np.fromfile(out, np.uint8), np.concatenate([t.reshape(-1) for t in tensors]))
