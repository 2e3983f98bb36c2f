"""Everything that can go wrong, as a Python exception that says what happened: a sender
that lies (the next buffer still arrives), a description that does not fit its memory,
a refused sender, timeouts, bad socket paths, a closed receiver."""

import json
import os
import stat
import time

import numpy as np
import pytest

import qsock
from conftest import DATA, finish, replay, until_gone


def index_of(array):
    return int(array.reshape(-1)[:8].view("<u8")[0])


def test_a_lying_sender_gives_an_exception_and_the_next_buffer_arrives(receiver, sock):
    # Message 2 claims maxsize 8192 for a 4608-byte memfd (tests/data/crafted/README.md).
    child = replay(sock, "crafted/video-maxsize-lie.jsonl")
    indices, errors = [], []
    while True:
        try:
            for buf in receiver:
                indices.append(index_of(buf.planes()[0]))
            break
        except qsock.ProtocolError as error:
            errors.append(str(error))  # the loop ended; the receiver did not: iterate again
    del buf
    until_gone(receiver)
    assert indices == [0, 1, 3, 4]
    assert len(errors) == 1 and "maxsize 8192" in errors[0] and "4608" in errors[0], errors
    assert receiver.stats()["protocol_errors"] == 1
    code, out = finish(child)
    assert code == 0, f"the lying sender did not get every buffer back, the rejected one included: {out}"


def crafted(tmp_path, change):
    """video-nopool.jsonl with `change(record)` applied to message 1's FRAME payload."""
    lines = (DATA / "video-nopool.jsonl").read_text().splitlines()
    message = json.loads(lines[1])
    record = bytearray.fromhex(message["record"])
    change(record, 8 + 72)  # FD_COUNT, BUFFER_INFO, then FRAME
    message["record"] = record.hex()
    lines[1] = json.dumps(message)
    path = tmp_path / "lie.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def set_i32(record, offset, value):
    record[offset:offset + 4] = value.to_bytes(4, "little", signed=True)


@pytest.mark.parametrize(
    "lie,message",
    [
        (lambda r, f: set_i32(r, f + 56, 200), "plane 1 reaches byte 7736"),  # UV stride 200: 3072 + 23 * 200 + 64
        (lambda r, f: set_i32(r, f + 52, 10), "stride 10 is less than a row's 64 bytes"),
        (lambda r, f: set_i32(r, f + 16, 1), "NV12 has 2 planes, the sender described 1"),
    ],
)
def test_a_description_that_does_not_fit_its_memory_makes_no_array(receiver, sock, tmp_path, lie, message):
    child = replay(sock, crafted(tmp_path, lie))
    buffers = list(receiver)
    assert len(buffers) == 5
    with pytest.raises(qsock.LayoutError, match=message):
        buffers[1].planes()
    assert isinstance(qsock.LayoutError("x"), qsock.ProtocolError)
    # The raw bytes are still there, bounded by the size the sender gave.
    assert buffers[1].memory().nbytes == 4608
    for buf in buffers[::2]:
        assert len(buf.planes()) == 2
    del buffers, buf
    until_gone(receiver)
    assert finish(child)[0] == 0


def test_a_sender_of_another_uid_is_refused(sock):
    with qsock.Receiver(sock, timeout=10, allowed_uids=[os.getuid() + 1]) as rx:
        child = replay(sock, "text.jsonl", "--connect-timeout-ms", "2000")
        with pytest.raises(qsock.SenderRefused) as caught:
            rx.recv()
        assert isinstance(caught.value, PermissionError)
        assert f"uid {os.getuid()}" in str(caught.value) and str(os.getuid() + 1) in str(caught.value)
        assert rx.stats()["senders_refused"] == 1
        finish(child)
    with qsock.Receiver(sock, timeout=10, allowed_uids=[os.getuid()]) as rx:
        child = replay(sock, "text.jsonl")
        assert [buf.text for buf in rx] == [f"frame {i}" for i in range(4)]
        assert rx.peer[1] == os.getuid()
        until_gone(rx)
        assert finish(child)[0] == 0


def test_timeouts(sock):
    with qsock.Receiver(sock, timeout=0.2) as rx:
        start = time.monotonic()
        with pytest.raises(qsock.Timeout, match="within 0.2 s"):
            rx.recv()
        assert 0.2 <= time.monotonic() - start < 2
        with pytest.raises(TimeoutError):
            next(iter(rx))
        start = time.monotonic()
        with pytest.raises(qsock.Timeout):
            rx.recv(timeout=0)
        assert time.monotonic() - start < 0.5
        with pytest.raises(ValueError, match="seconds"):
            rx.recv(timeout=-1)


def test_socket_paths(sock):
    with open(sock, "w") as f:
        f.write("precious")
    with pytest.raises(qsock.SocketPathError, match="is a regular file") as caught:
        qsock.Receiver(sock)
    assert isinstance(caught.value, OSError)
    assert open(sock).read() == "precious"
    os.unlink(sock)
    with pytest.raises(qsock.SocketPathError, match="at most 107"):
        qsock.Receiver("/tmp/" + "x" * 120)
    with qsock.Receiver(sock, socket_mode=0o660) as rx:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
        assert rx.fileno() >= 0
    assert not os.path.exists(sock), "close() removes the socket file"
    with pytest.raises(ValueError, match="permission mode"):
        qsock.Receiver(sock, socket_mode=0o7777)


def test_a_closed_receiver(sock):
    rx = qsock.Receiver(sock)
    rx.close()
    rx.close()
    assert rx.closed
    for use in (rx.recv, rx.fileno, lambda: next(iter(rx))):
        with pytest.raises(qsock.Closed):
            use()


def test_what_a_buffer_is_not(receiver, sock):
    with qsock.Sender(sock) as tx:
        tx.send_tensors([np.zeros((2, 2), np.float32)])
        buf = receiver.recv()
        with pytest.raises(qsock.WrongKind, match="not video"):
            buf.planes()
        with pytest.raises(IndexError):
            buf.memory(3)
        assert buf.video is None and buf.text is None
        tx.send_video(np.zeros((2, 2), np.uint8), format="GRAY8")
        buf = receiver.recv()
        with pytest.raises(qsock.WrongKind, match="not tensors"):
            buf.tensors()
