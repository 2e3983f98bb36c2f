"""The package as a user meets it: every video format's layout is GStreamer's own (checked
against GstVideoInfo), plane shapes fit their strides, every public name is documented
and typed, and the metas are plain comparable objects."""

import inspect
from pathlib import Path

import numpy as np
import pytest

import qsock

SIZES = [(1, 1), (2, 2), (17, 11), (64, 48), (33, 7), (1920, 1080), (1279, 719)]


def test_layouts_are_gstreamers():
    gi = pytest.importorskip("gi", reason="python3-gi (scripts/setup installs it)")
    gi.require_version("Gst", "1.0")
    gi.require_version("GstVideo", "1.0")
    from gi.repository import Gst, GstVideo

    Gst.init(None)
    for name, value in qsock.video_formats().items():
        gst_format = GstVideo.VideoFormat.from_string(name)
        assert int(gst_format) == value, name
        for width, height in SIZES:
            info = GstVideo.VideoInfo.new()
            info.set_format(gst_format, width, height)
            n = info.finfo.n_planes
            expected = ([info.offset[i] for i in range(n)], [info.stride[i] for i in range(n)], info.size)
            assert qsock.default_layout(name, width, height) == expected, f"{name} {width}x{height}"


@pytest.mark.parametrize("name", sorted(qsock.video_formats()))
def test_every_format_round_trips_at_odd_sizes(receiver, sock, name):
    with qsock.Sender(sock) as tx:
        for width, height in [(17, 11), (6, 4)]:
            with tx.frame(width, height, name) as frame:
                planes = frame.planes()
                for i, plane in enumerate(planes):
                    plane[...] = np.arange(plane.size, dtype=np.uint64).reshape(plane.shape).astype(plane.dtype) + i
                expected = [p.copy() for p in planes]
            del planes, plane
            buf = receiver.recv()
            assert (buf.video.format, buf.video.width, buf.video.height) == (name, width, height)
            got = buf.planes()
            assert [g.shape for g in got] == [e.shape for e in expected]
            for g, e in zip(got, expected):
                assert g.dtype == e.dtype and np.array_equal(g, e)
            # The same arrays, copied in by send_video, give the same frame.
            tx.send_video(expected, format=name)
            again = receiver.recv().planes()
            for g, e in zip(again, expected):
                assert np.array_equal(g, e)
            del buf, got, again


PUBLIC = [getattr(qsock, name) for name in qsock.__all__ if inspect.isclass(getattr(qsock, name))]


@pytest.mark.parametrize("cls", PUBLIC, ids=lambda c: c.__name__)
def test_every_public_class_is_documented(cls):
    assert cls.__doc__ and len(cls.__doc__) > 20, cls
    assert cls.__module__ in ("qsock", "qsock._qsock", "builtins"), cls.__module__
    for name, member in vars(cls).items():
        if name.startswith("_") or not callable(member):
            continue
        assert member.__doc__, f"{cls.__name__}.{name} has no docstring"


def test_help_reads_well():
    text = inspect.getdoc(qsock)
    assert "Receiver" in text and "release" in text and "GIL" in text
    assert "BufferInUse" in inspect.getdoc(qsock.Buffer)
    assert "timeout" in inspect.getdoc(qsock.Receiver.recv)


def test_the_stubs_name_everything():
    from qsock import _errors

    stubs = (Path(qsock.__file__).parent / "_qsock.pyi").read_text()
    for name in qsock.__all__:
        if name in ("EOS", "SENDER_GONE") or hasattr(_errors, name):
            continue  # defined in Python: typed where they are defined
        assert f"class {name}" in stubs or f"def {name}" in stubs or f"{name}:" in stubs, name
    assert (Path(qsock.__file__).parent / "py.typed").exists()


def test_errors_are_qsock_errors_and_builtins():
    assert issubclass(qsock.Timeout, TimeoutError) and issubclass(qsock.Timeout, qsock.Error)
    assert issubclass(qsock.SenderRefused, PermissionError)
    assert issubclass(qsock.BufferInUse, BufferError)
    assert issubclass(qsock.LayoutError, qsock.ProtocolError)
    assert issubclass(qsock.ReceiverGone, ConnectionError) and issubclass(qsock.Disconnected, ConnectionError)
    assert repr(qsock.Timeout("x")) == "Timeout('x')" and qsock.Timeout.__module__ == "qsock"


def test_metas_are_plain_objects():
    roi = qsock.RegionOfInterest("car", 1, 2, 3, 4, det_meta="ObjectDetection, confidence=(double)0.5;")
    assert roi == qsock.RegionOfInterest("car", 1, 2, 3, 4, det_meta="ObjectDetection, confidence=(double)0.5;")
    roi.x = 9
    assert roi.x == 9 and "car" in repr(roi)
    lm = qsock.Landmarks([qsock.Keypoint("a", 1, 2)], [(0, 0)])
    assert lm.links == [(0, 0)] and lm.keypoints[0].name == "a"
    assert qsock.Classification([qsock.ClassLabel("x", 0.5)]).labels[0].confidence == 0.5
