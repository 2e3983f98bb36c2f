"""The GIL is released while waiting: a thread blocked in recv() never stops the others;
a reader thread and a sending thread run side by side; interrupt() and close() end a
blocked wait from another thread; Ctrl-C reaches a wait with no timeout."""

import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np

import qsock
from conftest import spawn


def busy_python(seconds):
    """Pure-Python work (it needs the GIL the whole time) for `seconds` of wall time."""
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        n += 1
    return n


def test_a_thread_waiting_in_recv_does_not_block_other_threads(sock):
    with qsock.Receiver(sock) as rx:
        outcome = []
        ready = threading.Event()

        def wait():
            ready.set()
            try:
                rx.recv(timeout=5)
            except qsock.Interrupted:
                outcome.append("interrupted")

        reader = threading.Thread(target=wait)
        reader.start()
        ready.wait()
        start = time.monotonic()
        time.sleep(0.1)  # the reader is inside recv() now
        busy_python(0.3)
        # Had recv() kept the GIL, this thread could not have run on for 5 s.
        assert time.monotonic() - start < 2.0
        assert reader.is_alive(), "recv() returned early"
        rx.interrupt()
        reader.join(timeout=5)
        assert outcome == ["interrupted"] and not reader.is_alive()


def test_a_reader_thread_and_a_sender_thread(sock):
    frames = 300
    with qsock.Receiver(sock, timeout=10) as rx:
        seen = []

        def read():
            for buf in rx:
                [y] = buf.planes()
                seen.append(int(y[0, 0]) + 256 * int(y[0, 1]))

        reader = threading.Thread(target=read)
        reader.start()
        with qsock.Sender(sock, pool_size=4) as tx:
            for i in range(frames):
                with tx.frame(64, 48, "GRAY8", pts=i) as f:
                    [y] = f.planes()
                    y[0, 0], y[0, 1] = i % 256, i // 256
                del y
            tx.eos()
            reader.join(timeout=20)
        assert not reader.is_alive()
        assert seen == list(range(frames))


def test_close_from_another_thread_ends_the_loop(sock):
    rx = qsock.Receiver(sock)
    ended = threading.Event()

    def read():
        for _ in rx:
            pass
        ended.set()

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    rx.close()
    assert ended.wait(timeout=5), "the loop did not end after close()"
    reader.join()


def test_ctrl_c_reaches_a_wait_without_timeout(sock):
    script = textwrap.dedent(
        f"""
        import sys, time, qsock
        rx = qsock.Receiver({sock!r})
        print("waiting", flush=True)
        start = time.monotonic()
        try:
            rx.recv(timeout=None)
        except KeyboardInterrupt:
            print("interrupted after %.2f s" % (time.monotonic() - start), flush=True)
            sys.exit(0)
        sys.exit(1)
        """
    )
    child = spawn([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "waiting"
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=5)
    assert child.returncode == 0, out
    assert out.startswith("interrupted after")


def test_buffers_can_be_dropped_and_released_on_another_thread(sock):
    with qsock.Receiver(sock, timeout=5) as rx, qsock.Sender(sock, pool_size=2) as tx:
        held = []
        for i in range(20):
            tx.send_video(np.full((8, 8), i, np.uint8), format="GRAY8")
            buf = rx.recv()
            held.append((buf, buf.planes()[0]))
            if len(held) == 2:
                pair = held
                held = []
                worker = threading.Thread(target=lambda: pair.clear())
                worker.start()
                worker.join()
            del buf
        tx.flush()
        assert tx.stats()["returns"] == 20


def test_fileno_polls_readable_for_select(receiver, sock):
    import select

    with qsock.Sender(sock) as tx:
        assert select.select([receiver], [], [], 0)[0] == [receiver]  # a sender to accept
        tx.send_text("ready")
        assert select.select([receiver], [], [], 5)[0] == [receiver]
        assert receiver.recv(timeout=0).text == "ready"
