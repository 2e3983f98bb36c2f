"""qsock.FanoutSender to receivers in other processes, all listening in one directory:
qsock.Receiver in `python -c` children and qtisocketsrc in gst-launch-1.0. Every receiver
gets every buffer equal to what was sent; a stuck receiver (never releases) gets exactly
max_in_flight buffers while the others go on, and the memfd pool stays bounded; with
slow_receiver="wait" a stuck receiver makes a send time out; a receiver's hold on the
pool ends when it dies."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import qsock
from conftest import gst_env, require_gst, spawn

# A receiver in a process of its own: prints one line per buffer (kind, pts, sha256 of
# its bytes) until EOS. "stuck" keeps every buffer (never returns one).
RECEIVER = r"""
import hashlib, sys
import qsock
path, mode = sys.argv[1], sys.argv[2]
kept = []
with qsock.Receiver(path, timeout=60) as rx:
    print("listening", flush=True)
    for buf in rx:
        if buf.kind == "video":
            data = b"".join(p.tobytes() for p in buf.planes())
        elif buf.kind == "tensor":
            data = b"".join(t.tobytes() for t in buf.tensors())
        else:
            data = buf.text_bytes
        print(buf.kind, buf.pts, hashlib.sha256(data).hexdigest(), flush=True)
        if mode == "stuck":
            kept.append(buf)
        del buf
    print("eos", flush=True)
"""


@pytest.fixture
def directory():
    path = tempfile.mkdtemp(prefix="qsock-fan-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def python_receiver(directory, name, mode="release"):
    child = spawn(
        [sys.executable, "-c", RECEIVER, os.path.join(directory, name), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert child.stdout.readline() == "listening\n"
    return child


def received(child, timeout=30):
    """The (kind, pts, sha256) lines a receiver printed, once it ended at EOS."""
    out, _ = child.communicate(timeout=timeout)
    assert child.returncode == 0, out
    lines = out.splitlines()
    assert lines[-1] == "eos", out
    return [tuple(line.split()) for line in lines[:-1]]


def wait_for_receivers(tx, count, timeout=20):
    deadline = time.monotonic() + timeout
    while tx.receivers != count:
        assert time.monotonic() < deadline, f"{tx.receivers} receivers connected, expected {count}: {tx.stats}"
        time.sleep(0.01)


def sha(*arrays):
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


WIDTH, HEIGHT, FRAMES = 320, 240, 30
FRAME_BYTES = WIDTH * HEIGHT * 3 // 2


def test_every_receiver_gets_every_frame(directory, tmp_path):
    require_gst()
    out = tmp_path / "gst.nv12"
    caps = f"video/x-raw,format=NV12,width={WIDTH},height={HEIGHT},framerate=30/1"
    gst = spawn(
        ["gst-launch-1.0", "-q", "qtisocketsrc", f"socket={directory}/gst.sock", "!", caps, "!", "filesink",
         f"location={out}"],
        env=gst_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    children = [python_receiver(directory, f"py{i}.sock") for i in range(2)]
    rng = np.random.default_rng(16)
    sent = []
    # "wait": no receiver holds more than 4 frames, so 4 memfds out and one being filled are
    # enough (a send that finds none free waits for a return; none fails).
    with qsock.FanoutSender(directory, max_in_flight=4, slow_receiver="wait", pool_size=5) as tx:
        wait_for_receivers(tx, 3)
        for i in range(FRAMES):
            y = rng.integers(0, 256, (HEIGHT, WIDTH), np.uint8)
            uv = rng.integers(0, 256, (HEIGHT // 2, WIDTH // 2, 2), np.uint8)
            if i % 2:
                assert tx.send_video([y, uv], pts=i) == 3
            else:
                with tx.frame(WIDTH, HEIGHT, "NV12", pts=i) as frame:
                    fy, fuv = frame.planes()
                    fy[:], fuv[:] = y, uv
                del fy, fuv
                assert frame.receivers == 3
            sent.append((y, uv))
        assert tx.eos() == 3
        got = [received(child) for child in children]
        log, _ = gst.communicate(timeout=30)
        assert gst.returncode == 0, log
        tx.flush()
        stats = tx.stats
    expected = [("video", str(i), sha(y, uv)) for i, (y, uv) in enumerate(sent)]
    assert got == [expected, expected]
    written = np.fromfile(out, np.uint8).reshape(FRAMES, FRAME_BYTES)
    for i, (y, uv) in enumerate(sent):
        assert np.array_equal(written[i], np.concatenate([y.reshape(-1), uv.reshape(-1)])), f"frame {i} differs"
    assert stats["buffers_sent"] == FRAMES and stats["skipped"] == 0 and stats["dropped"] == 0
    assert stats["copies"] == FRAMES // 2 and stats["bytes_in_place"] == FRAMES // 2 * FRAME_BYTES
    assert stats["in_flight"] == 0 and stats["memfds_in_flight"] == 0
    # Each memfd crossed once to each receiver, then was reused.
    assert stats["pooled"] <= 5 and stats["fds_sent"] <= 5 * 3, stats


def test_a_stuck_receiver_gets_max_in_flight_and_the_others_go_on(directory):
    max_in_flight, count = 4, 24
    fast = [python_receiver(directory, f"fast{i}.sock") for i in range(2)]
    stuck = python_receiver(directory, "stuck.sock", "stuck")
    stuck_socket = os.path.join(directory, "stuck.sock")
    rng = np.random.default_rng(3)
    sent, delivered = [], []
    stuck_holds = stuck_memfds = 0
    with qsock.FanoutSender(directory, max_in_flight=max_in_flight, slow_receiver="skip") as tx:
        wait_for_receivers(tx, 3)
        for i in range(count):
            kind = ("video", "tensor", "text")[i % 3]
            if kind == "video":
                y = rng.integers(0, 256, (48, 64), np.uint8)
                uv = rng.integers(0, 256, (24, 32, 2), np.uint8)
                delivered.append(tx.send_video([y, uv], pts=i))
                sent.append((kind, str(i), sha(y, uv)))
            elif kind == "tensor":
                a = rng.random((2, 3, 4), dtype=np.float32)
                b = rng.integers(0, 1000, (5,), np.int64)
                delivered.append(tx.send_tensors([a, b], pts=i))
                sent.append((kind, str(i), sha(a, b)))
            else:
                text = f"buffer {i}"
                delivered.append(tx.send_text(text, pts=i))
                sent.append((kind, str(i), hashlib.sha256(text.encode()).hexdigest()))
            # The fast receivers return each buffer before the next goes (never skipped),
            # and the fan-out has let go of it: only the stuck receiver's memfds are out.
            if kind != "text" and stuck_holds < max_in_flight:
                stuck_holds += 1
                stuck_memfds += 1 if kind == "video" else 2
            deadline = time.monotonic() + 10
            while True:
                stats = tx.stats
                fast_in_flight = [r["in_flight"] for r in stats["receivers"] if r["socket"] != stuck_socket]
                if fast_in_flight == [0, 0] and stats["memfds_in_flight"] == stuck_memfds:
                    break
                assert time.monotonic() < deadline, stats
                time.sleep(0.002)
        stats = tx.stats
        by_socket = {r["socket"]: r for r in stats["receivers"]}
        # What the stuck receiver should have got: every buffer while it held fewer than
        # max_in_flight buffers of memory (text carries none, so holds nothing), then none.
        stuck_expected, holding = [], 0
        for kind, pts, digest in sent:
            if holding < max_in_flight:
                stuck_expected.append((kind, pts, digest))
                holding += kind != "text"
        stuck_stats = by_socket[stuck_socket]
        assert stuck_stats["in_flight"] == max_in_flight
        assert stuck_stats["buffers_sent"] == len(stuck_expected)
        assert stuck_stats["skipped"] == count - len(stuck_expected)
        assert stuck_stats["pid"] == stuck.pid and stuck_stats["uid"] == os.getuid()
        for i in range(2):
            r = by_socket[os.path.join(directory, f"fast{i}.sock")]
            assert (r["buffers_sent"], r["skipped"], r["in_flight"]) == (count, 0, 0), r
            assert r["pid"] == fast[i].pid
        assert stats["skipped"] == stuck_stats["skipped"] and stats["buffers_sent"] == count
        assert delivered == [3 if i < len(stuck_expected) else 2 for i in range(count)]
        # The stuck receiver holds max_in_flight buffers' memfds (a tensor buffer has two);
        # the other buffers cycle through one memfd per block size (3 sizes).
        held_memfds = sum({"video": 1, "tensor": 2, "text": 0}[kind] for kind, *_ in stuck_expected)
        assert stats["memfds_in_flight"] == held_memfds == stuck_memfds
        assert stats["pooled"] == held_memfds + 3, stats
        assert tx.eos() == 3
        fast_got = [received(child) for child in fast]
        stuck_got = received(stuck)
        # The stuck receiver exited: what it held is back, and every receiver left.
        tx.flush(timeout=10)
        wait_for_receivers(tx, 0)
        after = tx.stats
    assert fast_got == [sent, sent]
    assert stuck_got == stuck_expected
    assert after["memfds_in_flight"] == 0 and after["in_flight"] == 0 and after["left"] == 3


def test_slow_receiver_wait_times_out_naming_the_receiver(directory):
    stuck = python_receiver(directory, "stuck.sock", "stuck")
    frame = np.zeros((8, 8), np.uint8)
    with qsock.FanoutSender(directory, max_in_flight=2, slow_receiver="wait", return_timeout=0.3) as tx:
        wait_for_receivers(tx, 1)
        assert tx.send_video(frame, format="GRAY8") == 1
        assert tx.send_video(frame, format="GRAY8") == 1
        started = time.monotonic()
        with pytest.raises(qsock.Timeout, match="stuck.sock holds max_in_flight=2"):
            tx.send_video(frame, format="GRAY8")
        assert 0.25 < time.monotonic() - started < 5
        # The memfd of the send that timed out went back to the pool.
        assert tx.stats["memfds_in_flight"] == 2 and tx.stats["buffers_sent"] == 2
        stuck.kill()
        stuck.wait()
        tx.flush(timeout=10)
        assert tx.send_video(frame, format="GRAY8") == 0  # nobody left: dropped
        assert tx.stats["dropped"] == 1


def test_receivers_come_and_go(directory):
    frame = np.full((4, 4), 5, np.uint8)
    with qsock.FanoutSender(directory, max_in_flight=None, pool_size=2) as tx:
        assert tx.send_video(frame, format="GRAY8") == 0
        assert tx.send_text("nobody") == 0
        assert tx.eos() == 0
        assert tx.stats["dropped"] == 2 and tx.stats["buffers_sent"] == 0
        rx = qsock.Receiver(os.path.join(directory, "late.sock"), timeout=10)
        wait_for_receivers(tx, 1)
        assert tx.send_video(frame, format="GRAY8", pts=7) == 1
        buf = rx.recv()
        assert buf.pts == 7 and (buf.planes()[0] == 5).all()
        del buf
        rx.close()
        wait_for_receivers(tx, 0)
        assert tx.stats["left"] == 1
        tx.flush()
        for _ in range(10):  # no receiver, nothing out: the pool never grows
            assert tx.send_video(frame, format="GRAY8") == 0
        assert tx.stats["pooled"] <= 1


def test_wait_for_receiver_waits_for_one_to_join(directory):
    with qsock.FanoutSender(directory, wait_for_receiver=True) as tx:
        path = os.path.join(directory, "r.sock")
        late = f"import time\ntime.sleep(0.3)\n{RECEIVER}"
        child = spawn([sys.executable, "-c", late, path, "release"], stdout=subprocess.PIPE,
                      stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        assert tx.send_text("hello", pts=1) == 1
        assert time.monotonic() - started > 0.2
        tx.eos()
        lines = received(child)
    assert lines[-1] == ("text", "1", hashlib.sha256(b"hello").hexdigest())


def test_a_send_waiting_for_a_receiver_lets_threads_run_and_ctrl_c_in(directory):
    script = textwrap.dedent(
        f"""
        import sys, threading, time
        import numpy as np
        import qsock
        tx = qsock.FanoutSender({directory!r}, wait_for_receiver=True)
        ticks = []
        def tick():  # pure Python: runs only while the send has let go of the GIL
            while len(ticks) < 20:
                ticks.append(time.monotonic())
                time.sleep(0.01)
        ticker = threading.Thread(target=tick)
        print("waiting", flush=True)
        ticker.start()
        try:
            tx.send_video(np.zeros((8, 8), np.uint8), format="GRAY8")
        except KeyboardInterrupt:
            ticker.join()
            s = tx.stats
            print(len(ticks), s["memfds_in_flight"], s["pooled"], s["dropped"], flush=True)
            sys.exit(0)
        sys.exit(1)
        """
    )
    child = spawn([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout.readline() == "waiting\n"
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=5)
    assert child.returncode == 0, out
    # 20 ticks while the send waited; its memfd back in the pool, nothing sent or dropped.
    assert out.split() == ["20", "0", "1", "0"], out


def test_what_a_fanout_sender_refuses(directory):
    with pytest.raises(ValueError, match='"skip" or "wait"'):
        qsock.FanoutSender(directory, slow_receiver="drop")
    with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
        qsock.FanoutSender(directory, max_in_flight=0)
    with pytest.raises(qsock.SocketError, match="missing"):
        qsock.FanoutSender(os.path.join(directory, "missing"))
    tx = qsock.FanoutSender(directory)
    assert (tx.max_in_flight, tx.slow_receiver, tx.wait_for_receiver) == (4, "skip", False)
    assert str(tx.directory) == directory
    tx.close()
    tx.close()
    with pytest.raises(qsock.Closed):
        tx.send_text("x")
    assert tx.stats["receivers"] == []
