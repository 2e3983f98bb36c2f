"""qsock: receive and send video frames, tensors and text between processes as numpy
arrays, zero-copy, over the qtisocket protocol (the one ``qtisocketsink`` and
``qtisocketsrc`` speak), without GStreamer in this process.

Receiving::

    import qsock
    with qsock.Receiver("/tmp/cam.sock", timeout=5) as rx:
        for buf in rx:                      # ends at the sender's EOS
            y, uv = buf.planes()            # NV12: read-only views of the sender's memory
            print(buf.pts, y.mean())
                                            # the buffer goes back to the sender when
                                            # buf, y and uv are gone

Sending::

    with qsock.Sender("/tmp/cam.sock") as tx:
        tx.send_video([y, uv], format="NV12", pts=0)       # copied once into a memfd
        with tx.frame(1920, 1080, "NV12", pts=40_000_000) as f:
            y, uv = f.planes()                              # writable, no copy
            y[:] = 128
        tx.eos()

Sending to every receiver in a directory (each a ``Receiver`` or ``qtisocketsrc`` on a
socket there, joining and leaving as it likes)::

    with qsock.FanoutSender("/tmp/cams", max_in_flight=4, slow_receiver="skip") as tx:
        n = tx.send_video([y, uv], format="NV12", pts=0)   # how many receivers got it
        print(tx.stats["receivers"])                        # per-receiver figures

Memory and release: an array made by ``Buffer.planes()``, ``tensors()`` or ``memory()``
keeps the buffer alive; the buffer is returned to its sender when the Buffer object and
every such array (and every view of one) are gone. ``Buffer.release()`` returns it at
once, and raises ``BufferInUse`` instead while arrays of it are alive, so no array can
ever point at memory the sender took back. Keep ``array.copy()`` for data you hold on to.

Threads: every wait (receiving, connecting, waiting for returns) releases the GIL.
"""

from ._errors import (
    BufferInUse,
    Closed,
    Disconnected,
    Error,
    Interrupted,
    InvalidBuffer,
    LayoutError,
    PoolExhausted,
    ProtocolError,
    Released,
    ReceiverGone,
    SenderRefused,
    SocketError,
    SocketPathError,
    Timeout,
    UnsupportedFormat,
    WrongKind,
)
from ._qsock import (
    DEFAULT_SOCKET_MODE,
    Buffer,
    ClassLabel,
    Classification,
    FanoutSender,
    Frame,
    Keypoint,
    Landmarks,
    PlaneInfo,
    Protection,
    Receiver,
    RegionOfInterest,
    Sender,
    StreamEvent,
    TensorInfo,
    VideoInfo,
    default_layout,
    video_formats,
)

#: ``Receiver.recv()`` returns this when the sender ended its stream.
EOS = StreamEvent.EOS
#: ``Receiver.recv()`` returns this when the sender hung up.
SENDER_GONE = StreamEvent.SENDER_GONE

__version__ = "0.1.0"

__all__ = [
    "Receiver", "Buffer", "Sender", "FanoutSender", "Frame", "StreamEvent", "EOS", "SENDER_GONE",
    "VideoInfo", "PlaneInfo", "TensorInfo",
    "RegionOfInterest", "ClassLabel", "Classification", "Keypoint", "Landmarks", "Protection",
    "video_formats", "default_layout", "DEFAULT_SOCKET_MODE",
    "Error", "ProtocolError", "LayoutError", "SenderRefused", "Timeout", "Interrupted",
    "SocketPathError", "SocketError", "InvalidBuffer", "BufferInUse", "Released", "Closed",
    "WrongKind", "UnsupportedFormat", "Disconnected", "ReceiverGone", "PoolExhausted",
]
