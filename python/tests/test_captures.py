"""Python receiving what the deployed qtisocketsink sent (tests/data captures, played by
qsock-replay with real memfds): every field, the memory each buffer maps (each memfd
starts with the buffer's index), and every buffer returned (the replay's exit code)."""

import numpy as np
import pytest

import qsock
from conftest import address, finish, replay, until_gone


def index_of(array):
    """The buffer index qsock-replay wrote into the first 8 bytes of the memory."""
    return int(np.frombuffer(array.reshape(-1)[:8].tobytes(), "<u8")[0])


def receive_all(rx, sock, capture, handle):
    child = replay(sock, capture)
    results = [handle(buf) for buf in rx]  # ends at EOS
    until_gone(rx)
    code, out = finish(child)
    assert code == 0, f"qsock-replay: not every buffer came back: {out}"
    return results


@pytest.mark.parametrize("capture,count,pooled", [("video-pool.jsonl", 8, True), ("video-nopool.jsonl", 5, False)])
def test_video_frames(receiver, sock, capture, count, pooled):
    def handle(buf):
        assert buf.kind == "video" and buf.pooled is pooled and buf.n_blocks == 1
        info = buf.video
        assert (info.format, info.format_id, info.width, info.height) == ("NV12", 23, 64, 48)
        assert [(p.offset, p.stride) for p in info.planes] == [(0, 64), (3072, 64)]
        assert (info.size, info.maxsize) == (4608, 4608)
        y, uv = buf.planes()
        assert (y.shape, y.dtype, y.strides) == ((48, 64), np.uint8, (64, 1))
        assert (uv.shape, uv.dtype, uv.strides) == ((24, 32, 2), np.uint8, (64, 2, 1))
        assert not y.flags.writeable and not uv.flags.writeable
        with pytest.raises(ValueError):
            y[0, 0] = 1
        assert address(uv) - address(y) == 3072
        return buf.pts, buf.duration, index_of(y)

    results = receive_all(receiver, sock, capture, handle)
    # Each memfd starts with its buffer's index; a pool of 4 brings the first 4 back.
    expected = [i % 4 for i in range(count)] if pooled else list(range(count))
    assert [r[2] for r in results] == expected
    assert results[0][0] == 0 and results[1][0] == 33333333
    stats = receiver.stats()
    assert stats["buffers"] == count and stats["protocol_errors"] == 0


def test_pooled_memory_is_mapped_once_per_object(receiver, sock):
    addresses = receive_all(receiver, sock, "video-pool.jsonl", lambda buf: buf.planes()[0].__array_interface__["data"][0])
    # 4 pooled memfds, each mapped once: buffer i and i+4 share an address.
    assert addresses[:4] == addresses[4:]
    assert len(set(addresses)) == 4


def test_tensors(receiver, sock):
    def handle(buf):
        assert buf.kind == "tensor" and buf.video is None
        [info] = buf.tensor_infos
        assert (info.type, info.type_id, info.dimensions, info.size) == ("UINT8", 2, [1, 4, 4, 3], 48)
        assert info.dtype == np.dtype("uint8")
        [tensor] = buf.tensors()
        assert (tensor.shape, tensor.dtype, tensor.flags.c_contiguous) == ((1, 4, 4, 3), np.uint8, True)
        return index_of(tensor)

    assert receive_all(receiver, sock, "tensor.jsonl", handle) == [0, 1, 2, 3]


def test_pooled_tensors(receiver, sock):
    indices = receive_all(receiver, sock, "tensor-pool.jsonl", lambda buf: index_of(buf.tensors()[0]))
    assert len(indices) == 6


def test_text(receiver, sock):
    def handle(buf):
        assert buf.kind == "text"
        with pytest.raises(qsock.WrongKind):
            buf.planes()
        with pytest.raises(qsock.WrongKind):
            buf.fd()
        return buf.text, buf.text_bytes

    texts = receive_all(receiver, sock, "text.jsonl", handle)
    assert texts == [(f"frame {i}", f"frame {i}".encode()) for i in range(4)]


def test_regions_of_interest(receiver, sock):
    def handle(buf):
        [roi] = buf.rois
        assert buf.metas_list == [roi]
        assert buf.classifications == [] and buf.landmarks == [] and buf.protections == []
        return roi

    rois = receive_all(receiver, sock, "video-roi.jsonl", handle)
    det = "ObjectDetection, confidence=(double)87.5, color=(uint)4278190335;"
    assert rois == [
        qsock.RegionOfInterest("person", 10, 20, 30, 40, id=i, parent_id=-1, det_meta=det) for i in range(3)
    ]
    assert isinstance(rois[0].label, str) and rois[0].xtraparams is None


def test_recv_reports_eos_and_the_hang_up(receiver, sock):
    child = replay(sock, "text.jsonl")
    events = []
    while True:
        event = receiver.recv()
        events.append(event.text if isinstance(event, qsock.Buffer) else event)
        if event is qsock.SENDER_GONE:
            break
    assert events == [f"frame {i}" for i in range(4)] + [qsock.EOS, qsock.SENDER_GONE]
    assert qsock.EOS == qsock.StreamEvent.EOS
    assert finish(child)[0] == 0


def test_keep_listening_goes_on_across_senders(sock):
    with qsock.Receiver(sock, timeout=10, keep_listening=True) as rx:
        children = [replay(sock, "text.jsonl")]
        texts = []
        for buf in rx:
            texts.append(buf.text)
            if len(texts) == 4:
                children.append(replay(sock, "text.jsonl"))
            if len(texts) == 8:
                break
        assert texts == [f"frame {i}" for i in range(4)] * 2
        for child in children:
            assert finish(child)[0] == 0
