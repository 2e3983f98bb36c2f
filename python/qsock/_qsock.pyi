"""Type stubs of the extension module (python/src/*.rs): the docstrings are the Rust ones.
Checked against the module by mypy.stubtest (python/tests/test_typing.py)."""

import os
from pathlib import Path
from types import TracebackType
from typing_extensions import Self
from typing import ClassVar, final, Iterable, Iterator, Literal, Sequence, TypedDict, Union

import numpy as np
import numpy.typing as npt

_Meta = Union["RegionOfInterest", "Classification", "Landmarks", "Protection"]
_ArrayLike = npt.ArrayLike

DEFAULT_SOCKET_MODE: int

@final
class MemoryOwner:
    """The base object of the arrays qsock makes: keeps their memory mapped (internal)."""

def video_formats() -> dict[str, int]:
    """The formats planes(), send_video() and frame() know: {name: GstVideoFormat value}."""

def default_layout(format: str, width: int, height: int) -> tuple[list[int], list[int], int]:
    """GStreamer's default layout of a frame: (offsets, strides, size)."""

@final
class StreamEvent:
    """What Receiver.recv() returns besides a Buffer (compare with `is` or ==)."""

    EOS: ClassVar[StreamEvent]
    SENDER_GONE: ClassVar[StreamEvent]

@final
class PlaneInfo:
    """One plane of a video frame: its offset in the memory and its row stride."""

    @property
    def offset(self) -> int: ...
    @property
    def stride(self) -> int: ...

@final
class VideoInfo:
    """A video frame's description, as the sender gave it (GstVideoMeta values)."""

    @property
    def format(self) -> str: ...
    @property
    def format_id(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def planes(self) -> list[PlaneInfo]: ...
    @property
    def flags(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def maxsize(self) -> int: ...

@final
class TensorInfo:
    """A tensor's description: element type, dimensions, bytes."""

    @property
    def type(self) -> str: ...
    @property
    def type_id(self) -> int: ...
    @property
    def dtype(self) -> np.dtype | None: ...
    @property
    def dimensions(self) -> list[int]: ...
    @property
    def size(self) -> int: ...
    @property
    def maxsize(self) -> int: ...

@final
class RegionOfInterest:
    """A labelled rectangle (GstVideoRegionOfInterestMeta), in pixels."""

    label: str
    x: int
    y: int
    w: int
    h: int
    id: int
    parent_id: int
    det_meta: str | None
    xtraparams: str | None
    def __new__(
        cls,
        label: str,
        x: int,
        y: int,
        w: int,
        h: int,
        *,
        id: int = 0,
        parent_id: int = -1,
        det_meta: str | None = None,
        xtraparams: str | None = None,
    ) -> Self: ...

@final
class ClassLabel:
    """One label of a classification."""

    name: str
    confidence: float
    color: int
    xtraparams: str | None
    def __new__(cls, name: str, confidence: float = 0.0, *, color: int = 0, xtraparams: str | None = None) -> Self: ...

@final
class Classification:
    """An image classification result: up to 32 labels."""

    labels: list[ClassLabel]
    id: int
    parent_id: int
    def __new__(cls, labels: Sequence[ClassLabel], *, id: int = 0, parent_id: int = -1) -> Self: ...

@final
class Keypoint:
    """One keypoint of a landmarks result, in pixels."""

    name: str
    x: int
    y: int
    confidence: float
    color: int
    def __new__(cls, name: str, x: int, y: int, confidence: float = 0.0, *, color: int = 0) -> Self: ...

@final
class Landmarks:
    """A pose or landmarks result: up to 64 keypoints and 64 links."""

    keypoints: list[Keypoint]
    links: list[tuple[int, int]]
    confidence: float
    id: int
    parent_id: int
    xtraparams: str | None
    def __new__(
        cls,
        keypoints: Sequence[Keypoint],
        links: Sequence[tuple[int, int]] = (),
        confidence: float = 0.0,
        *,
        id: int = 0,
        parent_id: int = -1,
        xtraparams: str | None = None,
    ) -> Self: ...

@final
class Protection:
    """A GstProtectionMeta's info: a serialized GstStructure."""

    structure: str
    def __new__(cls, structure: str) -> Self: ...

@final
class Buffer:
    """One received buffer: its description and its memory as read-only numpy arrays
    (no copy). Returned to the sender when it and every array made from it are gone, or
    at release() (which raises BufferInUse while such arrays are alive)."""

    @property
    def pts(self) -> int | None: ...
    @property
    def dts(self) -> int | None: ...
    @property
    def duration(self) -> int | None: ...
    @property
    def kind(self) -> Literal["video", "tensor", "text"]: ...
    @property
    def pooled(self) -> bool: ...
    @property
    def n_blocks(self) -> int: ...
    @property
    def buf_ids(self) -> list[int]: ...
    @property
    def video(self) -> VideoInfo | None: ...
    @property
    def video_blocks(self) -> list[VideoInfo]: ...
    @property
    def tensor_infos(self) -> list[TensorInfo]: ...
    @property
    def text(self) -> str | None: ...
    @property
    def text_bytes(self) -> bytes | None: ...
    @property
    def rois(self) -> list[RegionOfInterest]: ...
    @property
    def classifications(self) -> list[Classification]: ...
    @property
    def landmarks(self) -> list[Landmarks]: ...
    @property
    def protections(self) -> list[Protection]: ...
    @property
    def metas_list(self) -> list[_Meta]: ...
    @property
    def released(self) -> bool: ...
    def planes(self, block: int = 0) -> list[np.ndarray]:
        """The frame's planes as read-only arrays over the sender's memory (NV12: Y, UV)."""
    def tensors(self) -> list[np.ndarray]:
        """The tensors as read-only arrays over the sender's memory."""
    def memory(self, block: int = 0) -> npt.NDArray[np.uint8]:
        """A block's visible bytes as a read-only uint8 array."""
    def fd(self, block: int = 0) -> int:
        """A block's fd, valid until the buffer is released. Do not close it."""
    def release(self) -> None:
        """Gives the buffer back now; raises BufferInUse while arrays of it are alive."""
    def __enter__(self) -> "Buffer": ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> None: ...

@final
class Receiver:
    """Receives buffers from one sender at a time on a UNIX socket; iterable (ends at
    EOS unless keep_listening) and a context manager. Waits release the GIL."""

    def __new__(
        cls,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        socket_mode: int = 0o600,
        allowed_uids: Iterable[int] | None = None,
        keep_listening: bool = False,
    ) -> Self: ...
    @property
    def path(self) -> Path: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def keep_listening(self) -> bool: ...
    @property
    def peer(self) -> tuple[int, int, int] | None: ...
    @property
    def closed(self) -> bool: ...
    def recv(self, timeout: float | None = ...) -> Buffer | StreamEvent:
        """The next buffer, EOS or SENDER_GONE; raises Timeout, Interrupted,
        ProtocolError, SenderRefused, Closed."""
    def __iter__(self) -> Iterator[Buffer]: ...
    def __next__(self) -> Buffer: ...
    def interrupt(self) -> None: ...
    def send_disconnect(self) -> bool: ...
    def stats(self) -> dict[str, int | bool]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Receiver": ...
    def __exit__(self, *exc: object) -> None: ...

@final
class Frame:
    """A video frame written in place into a pooled memfd; sent at the end of its with
    block (no copy)."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def receivers(self) -> int | None:
        """How many receivers got the frame; None until it is sent."""
    def planes(self) -> list[np.ndarray]:
        """Writable arrays over the memfd, one per plane."""
    def fd(self) -> int: ...
    def send(self) -> int:
        """Sends the frame (no copy); returns how many receivers got it."""
    def cancel(self) -> None: ...
    def __enter__(self) -> "Frame": ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> None: ...

@final
class Sender:
    """Sends buffers to one receiver, memory through a pool of sealed memfds."""

    def __new__(
        cls,
        path: str | os.PathLike[str],
        *,
        connect_timeout: float = 10.0,
        pool_size: int = 16,
        return_timeout: float = 5.0,
    ) -> Self: ...
    @property
    def path(self) -> Path: ...
    def send_video(
        self,
        planes: _ArrayLike | Sequence[_ArrayLike],
        *,
        format: str = "NV12",
        pts: int | None = None,
        duration: int | None = None,
        metas: Iterable[_Meta] | None = None,
    ) -> int:
        """Sends a frame, copied once into a pooled memfd; returns how many receivers
        got it (1 for a Sender; failures raise)."""
    def send_tensors(
        self, tensors: Iterable[_ArrayLike], *, pts: int | None = None, duration: int | None = None
    ) -> int:
        """Sends 1..=10 tensors, each copied once into a pooled memfd."""
    def send_text(self, text: str | bytes, *, pts: int | None = None, duration: int | None = None) -> int: ...
    def frame(
        self,
        width: int,
        height: int,
        format: str = "NV12",
        *,
        pts: int | None = None,
        duration: int | None = None,
        metas: Iterable[_Meta] | None = None,
    ) -> Frame:
        """A frame to fill in place (writable views of a pooled memfd), sent at the end
        of its with block."""
    def eos(self) -> int: ...
    def flush(self, timeout: float = 5.0) -> None: ...
    def stats(self) -> dict[str, int | bool]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Sender": ...
    def __exit__(self, *exc: object) -> None: ...

class _FanoutReceiverStats(TypedDict):
    socket: str
    pid: int | None
    uid: int | None
    gid: int | None
    buffers_sent: int
    fds_sent: int
    skipped: int
    in_flight: int
    returns: int
    connected_since: float

class _FanoutStats(TypedDict):
    buffers_sent: int
    fds_sent: int
    returns: int
    dropped: int
    skipped: int
    in_flight: int
    connections: int
    joined: int
    left: int
    copies: int
    bytes_copied: int
    bytes_in_place: int
    pooled: int
    memfds_in_flight: int
    receivers: list[_FanoutReceiverStats]

@final
class FanoutSender:
    """Sends buffers to every receiver listening on a socket in a directory, as they come
    and go; a receiver at max_in_flight misses buffers ("skip") or is waited for ("wait").
    Send methods return how many receivers got the buffer (0: none connected, or skipped)."""

    def __new__(
        cls,
        directory: str | os.PathLike[str],
        *,
        max_in_flight: int | None = 4,
        slow_receiver: Literal["skip", "wait"] = "skip",
        wait_for_receiver: bool = False,
        pool_size: int = 16,
        return_timeout: float = 5.0,
    ) -> Self: ...
    @property
    def directory(self) -> Path: ...
    @property
    def max_in_flight(self) -> int | None: ...
    @property
    def slow_receiver(self) -> Literal["skip", "wait"]: ...
    @property
    def wait_for_receiver(self) -> bool: ...
    @property
    def receivers(self) -> int:
        """The receivers connected now."""
    @property
    def stats(self) -> _FanoutStats:
        """Totals, the pool's counters, and one dict per connected receiver."""
    def send_video(
        self,
        planes: _ArrayLike | Sequence[_ArrayLike],
        *,
        format: str = "NV12",
        pts: int | None = None,
        duration: int | None = None,
        metas: Iterable[_Meta] | None = None,
    ) -> int:
        """Sends a frame, copied once into a pooled memfd; returns how many receivers got it."""
    def send_tensors(
        self, tensors: Iterable[_ArrayLike], *, pts: int | None = None, duration: int | None = None
    ) -> int:
        """Sends 1..=10 tensors, each copied once into a pooled memfd."""
    def send_text(self, text: str | bytes, *, pts: int | None = None, duration: int | None = None) -> int: ...
    def frame(
        self,
        width: int,
        height: int,
        format: str = "NV12",
        *,
        pts: int | None = None,
        duration: int | None = None,
        metas: Iterable[_Meta] | None = None,
    ) -> Frame:
        """A frame to fill in place (writable views of a pooled memfd), sent to every
        receiver at the end of its with block."""
    def eos(self) -> int:
        """Sends EOS to the receivers connected now; returns how many."""
    def flush(self, timeout: float = 5.0) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> "FanoutSender": ...
    def __exit__(self, *exc: object) -> None: ...
