"""When a buffer goes back to its sender: when the Buffer and every array made from it
are gone (garbage collection), or at release(), which is refused while arrays live.
Memory is never pulled from under an array, so nothing here can crash."""

import gc
import os

import numpy as np
import pytest

import qsock
from conftest import address, finish, mappings, replay, until_gone


def returns(rx):
    return rx.stats()["returns_sent"]


def first_buffer(rx, sock, capture="video-nopool.jsonl"):
    child = replay(sock, capture)
    buf = rx.recv()
    assert isinstance(buf, qsock.Buffer), buf
    return child, buf


def drain(rx, child):
    for buf in rx:
        pass
    del buf
    until_gone(rx)
    assert finish(child)[0] == 0


def test_returned_when_the_buffer_and_its_arrays_are_collected(receiver, sock):
    child, buf = first_buffer(receiver, sock)
    y, uv = buf.planes()
    view = y[10:20, ::2]  # a view of a view keeps it too
    before = returns(receiver)
    del buf
    gc.collect()
    assert returns(receiver) == before, "returned while arrays were alive"
    del y, uv
    gc.collect()
    assert returns(receiver) == before, "returned while a view of an array was alive"
    assert view.sum() >= 0  # still readable
    del view
    assert returns(receiver) == before + 1, "not returned once the last array went"
    drain(receiver, child)


def test_release_while_arrays_live_raises_and_changes_nothing(receiver, sock):
    child, buf = first_buffer(receiver, sock)
    [tensor_like] = [buf.memory()]
    before = returns(receiver)
    with pytest.raises(qsock.BufferInUse, match="1 array"):
        buf.release()
    with pytest.raises(BufferError):  # the built-in it refines, as memoryview.release()
        buf.release()
    assert not buf.released and returns(receiver) == before
    assert int(tensor_like[:8].view("<u8")[0]) == 0  # the memory is still there to read
    del tensor_like
    buf.release()
    assert buf.released and returns(receiver) == before + 1
    buf.release()  # twice is fine
    drain(receiver, child)


def test_use_after_release_raises(receiver, sock):
    child, buf = first_buffer(receiver, sock)
    buf.release()
    for use in (buf.planes, buf.memory, buf.fd):
        with pytest.raises(qsock.Released):
            use()
    # The description stays readable.
    assert buf.video.width == 64 and buf.pts == 0 and "released" in repr(buf)
    drain(receiver, child)


def test_context_manager_releases_at_the_end_of_the_block(receiver, sock):
    child, buf = first_buffer(receiver, sock)
    before = returns(receiver)
    with buf:
        mean = float(buf.planes()[0].mean())  # the array is gone before the block ends
    assert buf.released and returns(receiver) == before + 1 and mean >= 0
    child2, buf2 = child, receiver.recv()
    with pytest.raises(qsock.BufferInUse):
        with buf2:
            kept = buf2.planes()
    assert not buf2.released
    del kept, buf2
    drain(receiver, child)


def test_an_exception_in_the_block_is_not_hidden_by_live_arrays(receiver, sock):
    child, buf = first_buffer(receiver, sock)
    with pytest.raises(KeyError):
        with buf:
            kept = buf.planes()
            raise KeyError("the user's error")
    del kept, buf
    drain(receiver, child)


def test_arrays_outlive_the_receiver(sock):
    rx = qsock.Receiver(sock, timeout=10)
    tx = qsock.Sender(sock)
    tx.send_video(np.full((4, 8), 9, np.uint8), format="GRAY8")
    buf = rx.recv()
    [y] = buf.planes()
    del buf
    rx.close()
    # The mapping is still ours: reading it is safe after the receiver closed.
    assert (y == 9).all()
    start = address(y)
    assert any(lo <= start < hi for lo, hi, _, _ in mappings())
    del y
    assert not any(lo <= start < hi for lo, hi, _, _ in mappings()), "the mapping outlived its arrays"
    # The return still went out on the old connection, then the connection closed.
    tx.flush()
    assert tx.stats()["returns"] == 1
    with pytest.raises(qsock.ReceiverGone):
        tx.send_text("late")


def test_fd_is_the_buffers_until_release(receiver, sock):
    child, buf = first_buffer(receiver, sock)
    fd = buf.fd()
    assert os.fstat(fd).st_size == 4608
    buf.release()
    with pytest.raises(OSError):
        os.fstat(fd)  # closed with the buffer (unpooled)
    drain(receiver, child)
