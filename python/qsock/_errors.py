"""The exceptions qsock raises. Each derives from `qsock.Error` and, where one fits,
from the built-in exception it refines, so ``except TimeoutError`` works too."""


class Error(Exception):
    """Base of every qsock error."""


class ProtocolError(Error):
    """The peer broke the wire protocol. The message was rejected, its fds closed and
    its buffer returned to the sender; the stream goes on (call ``recv()`` again)."""


class LayoutError(ProtocolError):
    """A buffer's description does not fit its memory (a plane or tensor reaching past
    the size the sender gave, a stride shorter than a row): no array is made."""


class SenderRefused(Error, PermissionError):
    """A sender whose uid is not in ``allowed_uids`` connected; it was disconnected and
    the receiver goes on listening."""


class Timeout(Error, TimeoutError):
    """Nothing arrived (or nothing came back) within the timeout."""


class Interrupted(Error):
    """``Receiver.interrupt()`` was called while ``recv()`` waited."""


class SocketPathError(Error, OSError):
    """The socket path cannot be used: too long, or taken by something that is not a
    socket (it is left alone)."""


class SocketError(Error, OSError):
    """A system call on the socket failed (``errno`` is set when the system gave one),
    e.g. no receiver at the path (ENOENT, ECONNREFUSED)."""


class InvalidBuffer(Error, ValueError):
    """The sender refused to send a buffer a receiver would reject."""


class BufferInUse(Error, BufferError):
    """``Buffer.release()`` while arrays made from the buffer are alive. Delete them (or
    keep copies) first; the buffer goes back by itself when the last one goes."""


class Released(Error, ValueError):
    """The buffer (or frame) was released or sent: its memory is no longer ours."""


class Closed(Error, ValueError):
    """The receiver or sender was closed."""


class WrongKind(Error, TypeError):
    """Asked a buffer for what it does not hold (``planes()`` of tensors, ...)."""


class UnsupportedFormat(Error, NotImplementedError):
    """A video format or tensor type without a numpy mapping here; ``Buffer.memory()``
    still gives the raw bytes."""


class Disconnected(Error, ConnectionError):
    """The receiver sent DISCONNECT (it paused): it wants nothing more on this
    connection. Make a new Sender to go on."""


class ReceiverGone(Error, ConnectionError):
    """The receiver closed the connection or died."""


class PoolExhausted(Error, RuntimeError):
    """Every pooled memfd is held by arrays from ``Sender.frame()`` or by unsent frames."""


__all__ = [
    "Error", "ProtocolError", "LayoutError", "SenderRefused", "Timeout", "Interrupted",
    "SocketPathError", "SocketError", "InvalidBuffer", "BufferInUse", "Released", "Closed",
    "WrongKind", "UnsupportedFormat", "Disconnected", "ReceiverGone", "PoolExhausted",
]

# Shown as qsock.Timeout, not qsock._errors.Timeout, in tracebacks and help().
for _name in __all__:
    globals()[_name].__module__ = "qsock"
del _name
