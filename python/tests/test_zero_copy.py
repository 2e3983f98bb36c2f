"""Zero-copy, proven from /proc/self/maps: a received array's data lies inside a mapping
of the very object behind the buffer's fd (same inode), and the sender's in-place frames
copy nothing (its counters say so, and the receiver sees the sender's memfd)."""

import os

import numpy as np

import qsock
from conftest import address, finish, mappings, replay, until_gone


def mapping_of(array):
    start = address(array)
    found = [m for m in mappings() if m[0] <= start < m[1]]
    assert len(found) == 1, f"no single mapping holds {start:#x}"
    return found[0]


def test_received_arrays_lie_in_the_mapping_of_the_fds_object(receiver, sock):
    child = replay(sock, "video-pool.jsonl")
    for buf in receiver:
        inode = os.fstat(buf.fd()).st_ino
        y, uv = buf.planes()
        [raw] = [buf.memory()]
        for array in (y, uv, raw):
            lo, hi, mapped_inode, path = mapping_of(array)
            assert mapped_inode == inode, f"{path}: inode {mapped_inode}, the fd's is {inode}"
            assert path.startswith("/memfd:qsock-replay"), path
            end = address(array) + array.nbytes
            assert end <= hi
            assert array.base is not None and not array.flags.owndata
        assert address(raw) == address(y)
    del buf, y, uv, raw, array
    until_gone(receiver)
    assert finish(child)[0] == 0


def test_frames_written_in_place_copy_nothing(receiver, sock):
    with qsock.Sender(sock) as tx:
        sent = []
        for i in range(6):
            with tx.frame(64, 48, "NV12", pts=i) as frame:
                y, uv = frame.planes()
                assert y.flags.writeable and (y.shape, uv.shape) == ((48, 64), (24, 32, 2))
                y[:] = i
                uv[:] = 128 + i
                fd = frame.fd()
            assert not y.flags.writeable, "a sent frame's arrays turn read-only"
            sent.append((fd, os.fstat(fd).st_ino))
            del y, uv
            buf = receiver.recv()
            if buf == qsock.StreamEvent.EOS:
                raise AssertionError("unexpected EOS")
            ry, ruv = buf.planes()
            assert (ry == i).all() and (ruv == 128 + i).all()
            # The receiver maps the sender's own memfd (the same inode), not a copy.
            assert os.fstat(buf.fd()).st_ino == sent[-1][1]
            assert mapping_of(ry)[3].startswith("/memfd:qsock-python")
            del buf, ry, ruv
        tx.flush()
        stats = tx.stats()
        assert stats["copies"] == 0 and stats["bytes_copied"] == 0
        assert stats["bytes_in_place"] == 6 * 4608
        assert stats["buffers_sent"] == 6 and stats["in_flight"] == 0
        # One memfd went round and round: it crossed the socket once.
        assert stats["fds_sent"] == 1 and stats["pooled"] == 1
        assert len({inode for _, inode in sent}) == 1


def test_send_video_copies_once_and_counts_it(receiver, sock):
    y = np.arange(48 * 64, dtype=np.uint8).reshape(48, 64)
    uv = np.full((24, 32, 2), 7, np.uint8)
    with qsock.Sender(sock) as tx:
        tx.send_video([y, uv], format="NV12", pts=5)
        buf = receiver.recv()
        ry, ruv = buf.planes()
        assert np.array_equal(ry, y) and np.array_equal(ruv, uv)
        assert address(ry) != address(y)
        stats = tx.stats()
        assert stats["copies"] == 1 and stats["bytes_copied"] == y.nbytes + uv.nbytes
        assert stats["bytes_in_place"] == 0
