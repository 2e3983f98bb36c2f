"""qsock.Sender to qsock.Receiver in one process: video of several formats and layouts,
tensors of every dtype, text, metas both ways, the pool, frames written in place, EOS,
DISCONNECT, and what a sender refuses to send."""

import numpy as np
import pytest

import qsock

rng = np.random.default_rng(16)


def roundtrip(receiver, send):
    send()
    buf = receiver.recv()
    assert isinstance(buf, qsock.Buffer), buf
    return buf


@pytest.mark.parametrize(
    "format,planes",
    [
        ("NV12", [(48, 64), (24, 32, 2)]),
        ("NV12", [(11, 17), (6, 9, 2)]),  # odd sizes: GStreamer's padded strides
        ("I420", [(48, 64), (24, 32), (24, 32)]),
        ("RGB", [(10, 13, 3)]),
        ("BGRx", [(10, 13, 4)]),
        ("GRAY8", [(7, 5)]),
        ("YUY2", [(4, 6, 2)]),
        ("Y444", [(5, 5), (5, 5), (5, 5)]),
    ],
)
def test_video_formats_round_trip(receiver, sock, format, planes):
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in planes]
    with qsock.Sender(sock) as tx:
        buf = roundtrip(receiver, lambda: tx.send_video(arrays, format=format, pts=1, duration=2))
        assert (buf.video.format, buf.pts, buf.duration) == (format, 1, 2)
        height, width = planes[0][:2]
        offsets, strides, size = qsock.default_layout(format, width, height)
        assert [(p.offset, p.stride) for p in buf.video.planes] == list(zip(offsets, strides))
        assert buf.video.size == size
        received = buf.planes()
        assert len(received) == len(arrays)
        for got, want in zip(received, arrays):
            assert got.shape == want.shape and np.array_equal(got, want)


def test_gray16_and_stacked_nv12(receiver, sock):
    gray = rng.integers(0, 65536, (9, 11), dtype=np.uint16)
    stacked = rng.integers(0, 256, (72, 64), dtype=np.uint8)  # (height * 3 / 2, width)
    with qsock.Sender(sock) as tx:
        buf = roundtrip(receiver, lambda: tx.send_video(gray, format="GRAY16_LE"))
        [got] = buf.planes()
        assert got.dtype == np.dtype("<u2") and np.array_equal(got, gray)
        buf = roundtrip(receiver, lambda: tx.send_video(stacked, format="nv12"))
        y, uv = buf.planes()
        assert np.array_equal(y, stacked[:48]) and np.array_equal(uv.reshape(24, 64), stacked[48:])


@pytest.mark.parametrize(
    "dtype,name",
    [("int8", "INT8"), ("uint8", "UINT8"), ("int16", "INT16"), ("uint16", "UINT16"), ("int32", "INT32"),
     ("uint32", "UINT32"), ("int64", "INT64"), ("uint64", "UINT64"), ("float16", "FLOAT16"), ("float32", "FLOAT32")],
)
def test_tensors_of_every_type(receiver, sock, dtype, name):
    a = (rng.random((2, 3, 4)) * 100).astype(dtype)
    b = np.asfortranarray((rng.random((5, 6)) * 100).astype(dtype))  # any layout in, C order out
    with qsock.Sender(sock) as tx:
        buf = roundtrip(receiver, lambda: tx.send_tensors([a, b], pts=3))
        infos = buf.tensor_infos
        assert [i.type for i in infos] == [name, name] and [i.dimensions for i in infos] == [[2, 3, 4], [5, 6]]
        got_a, got_b = buf.tensors()
        assert got_a.dtype == np.dtype(dtype) and np.array_equal(got_a, a) and np.array_equal(got_b, b)
        assert got_b.flags.c_contiguous


def test_text_and_eos(receiver, sock):
    with qsock.Sender(sock) as tx:
        buf = roundtrip(receiver, lambda: tx.send_text("héllo", pts=9))
        assert (buf.kind, buf.text, buf.pts) == ("text", "héllo", 9)
        tx.eos()
        assert receiver.recv() is qsock.EOS
    assert receiver.recv() is qsock.SENDER_GONE


def test_metas_round_trip(receiver, sock):
    metas = [
        qsock.RegionOfInterest("person", 1, 2, 30, 40, id=7, det_meta="ObjectDetection, confidence=(double)0.5;"),
        qsock.Classification([qsock.ClassLabel("cat", 0.9, color=0xFF0000FF), qsock.ClassLabel("dog", 0.1)], id=2),
        qsock.Landmarks(
            [qsock.Keypoint("nose", 5, 6, 0.8), qsock.Keypoint("eye", 7, 8, 0.7)], [(0, 1)], 0.75, xtraparams="x, a=1;"
        ),
        qsock.Protection("application/x-cenc, iv_size=(uint)16;"),
    ]
    with qsock.Sender(sock) as tx:
        buf = roundtrip(receiver, lambda: tx.send_video(np.zeros((4, 4), np.uint8), format="GRAY8", metas=metas))
        assert buf.rois == [metas[0]] and buf.classifications == [metas[1]]
        assert buf.landmarks == [metas[2]] and buf.protections == [metas[3]]
        assert buf.metas_list == [metas[3], metas[0], metas[1], metas[2]]  # wire order


def test_what_a_sender_refuses(receiver, sock):
    with qsock.Sender(sock) as tx:
        with pytest.raises(TypeError, match="uint8"):
            tx.send_video([np.zeros((4, 4), np.float32), np.zeros((2, 2, 2), np.uint8)], format="NV12")
        with pytest.raises(ValueError, match="shape"):
            tx.send_video([np.zeros((4, 4), np.uint8), np.zeros((2, 3, 2), np.uint8)], format="NV12")
        with pytest.raises(ValueError, match="unknown video format"):
            tx.send_video(np.zeros((4, 4), np.uint8), format="MJPEG")
        with pytest.raises(TypeError, match="float64"):
            tx.send_tensors([np.zeros(3)])
        with pytest.raises(ValueError, match="1..=10"):
            tx.send_tensors([np.zeros(1, np.uint8)] * 11)
        with pytest.raises(ValueError, match="at most 1024"):
            tx.send_text("x" * 1025)
        with pytest.raises(ValueError, match="at most 31"):
            tx.send_video(np.zeros((4, 4), np.uint8), format="GRAY8", metas=[qsock.RegionOfInterest("x" * 40, 0, 0, 1, 1)])
        for width, height in ((0, 4), (70000, 2)):
            with pytest.raises(ValueError, match="width and height are 1..=65536"):
                tx.frame(width, height, "GRAY8")
        with pytest.raises(ValueError, match="width and height"):
            tx.send_video(np.zeros((0, 4), np.uint8), format="GRAY8")
        with pytest.raises(TypeError, match="metas takes"):
            tx.send_video(np.zeros((4, 4), np.uint8), format="GRAY8", metas=["person"])
        assert tx.stats()["buffers_sent"] == 0 and tx.stats()["in_flight"] == 0
        # Still usable after all that.
        buf = roundtrip(receiver, lambda: tx.send_text("ok"))
        assert buf.text == "ok"


def test_the_pool_reuses_returned_memfds(receiver, sock):
    frame = np.zeros((48, 64), np.uint8)
    with qsock.Sender(sock, pool_size=3) as tx:
        for i in range(50):
            frame[0, 0] = i
            tx.send_video([frame, np.zeros((24, 32, 2), np.uint8)], pts=i)
            buf = receiver.recv()
            assert buf.planes()[0][0, 0] == i
            del buf
        tx.flush()
        stats = tx.stats()
        assert stats["buffers_sent"] == 50 and stats["returns"] == 50 and stats["pooled"] <= 2
        assert stats["fds_sent"] <= 2


def test_a_full_pool_waits_for_returns_then_times_out(receiver, sock):
    y, uv = np.zeros((48, 64), np.uint8), np.zeros((24, 32, 2), np.uint8)
    with qsock.Sender(sock, pool_size=2, return_timeout=0.2) as tx:
        tx.send_video([y, uv])
        tx.send_video([y, uv])
        held = [receiver.recv(), receiver.recv()]
        with pytest.raises(qsock.Timeout, match="2 of 2 pooled memfds are out"):
            tx.send_video([y, uv])
        del held[0]  # one comes back: the next send goes through
        tx.send_video([y, uv])
        assert isinstance(receiver.recv(), qsock.Buffer)


def test_frame_cancelled_by_an_exception_is_not_sent(receiver, sock):
    with qsock.Sender(sock, pool_size=1) as tx:
        with pytest.raises(RuntimeError):
            with tx.frame(8, 8, "GRAY8") as f:
                f.planes()[0][:] = 1
                raise RuntimeError("oops")
        assert tx.stats()["buffers_sent"] == 0
        with pytest.raises(qsock.Timeout):
            receiver.recv(timeout=0.05)
        # The memfd went back to the pool: the only one is free again.
        with tx.frame(8, 8, "GRAY8") as f:
            f.planes()[0][:] = 2
        assert (receiver.recv().planes()[0] == 2).all()
        with pytest.raises(qsock.Released):
            f.planes()
        with pytest.raises(qsock.Released):
            f.send()


def test_arrays_held_from_frames_keep_their_memfds_out_of_the_pool(receiver, sock):
    with qsock.Sender(sock, pool_size=1) as tx:
        with tx.frame(8, 8, "GRAY8") as f:
            [kept] = f.planes()
            kept[:] = 3
        receiver.recv().release()
        tx.flush()
        with pytest.raises(qsock.PoolExhausted):
            tx.frame(8, 8, "GRAY8")
        assert (kept == 3).all()  # never changed under us
        del kept
        with tx.frame(8, 8, "GRAY8") as f:
            f.planes()[0][:] = 4


def test_disconnect_stops_the_sender(receiver, sock):
    with qsock.Sender(sock) as tx:
        roundtrip(receiver, lambda: tx.send_text("a"))
        assert receiver.send_disconnect()
        tx.flush()  # takes the DISCONNECT in
        with pytest.raises(qsock.Disconnected):
            tx.send_text("b")
        with pytest.raises(ConnectionError):
            tx.send_text("b")


def test_a_receiver_that_goes_away(sock):
    rx = qsock.Receiver(sock)
    tx = qsock.Sender(sock)
    tx.send_text("a")
    rx.close()
    tx.flush()
    with pytest.raises(qsock.ReceiverGone):
        tx.send_text("b")
    tx.close()
    with pytest.raises(qsock.Closed):
        tx.eos()


def test_no_receiver_at_the_path(sock):
    with pytest.raises(qsock.SocketError) as caught:
        qsock.Sender(sock, connect_timeout=0.05)
    assert isinstance(caught.value, OSError) and caught.value.errno is not None
    assert sock in str(caught.value)


def test_memfds_are_sealed_against_resizing(receiver, sock):
    import fcntl
    import os

    with qsock.Sender(sock) as tx:
        buf = roundtrip(receiver, lambda: tx.send_video(np.zeros((4, 4), np.uint8), format="GRAY8"))
        seals = fcntl.fcntl(buf.fd(), fcntl.F_GET_SEALS)
        wanted = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        assert seals & wanted == wanted
        with pytest.raises(PermissionError):
            os.ftruncate(buf.fd(), 1)  # no receiver can be made to read past the end
