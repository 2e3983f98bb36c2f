"""Shared helpers: the repository's build output (qsock-replay, the GStreamer plugin),
the captures of the deployed sender, short socket paths, and process facts (fds, RSS,
mappings) read from /proc."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import qsock

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
# Built by `cargo build --lib --bins` in the main crate (scripts/test does it first).
BUILD = Path(os.environ.get("QSOCK_BUILD_DIR", REPO / "target" / "debug"))
REPLAY = BUILD / "qsock-replay"


# Children started by a test; whatever still runs when the test ends (it failed half-way)
# is killed, so that no sender outlives its test.
_children = []


@pytest.fixture(autouse=True)
def _kill_leftover_children():
    yield
    while _children:
        child = _children.pop()
        if child.poll() is None:
            child.kill()
            child.wait()


def spawn(command, **kwargs):
    """subprocess.Popen, killed at the end of the test if still running."""
    child = subprocess.Popen(command, **kwargs)
    _children.append(child)
    return child


def replay(socket, capture, *args, quiet=True):
    """Starts qsock-replay playing `capture` (a name under tests/data) into `socket`."""
    if not REPLAY.exists():
        pytest.fail(f"{REPLAY} is missing: run `cargo build --lib --bins` in {REPO}")
    command = [str(REPLAY), str(socket), str(DATA / capture), *map(str, args)]
    if quiet:
        command.append("--quiet")
    return spawn(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=20):
    """Waits for a child; returns (exit code, output)."""
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out


def gst_env():
    """The environment for gst-launch-1.0 with our plugin (libgstqtisocket.so) on the path."""
    env = dict(os.environ)
    env["GST_PLUGIN_PATH"] = str(BUILD)
    env.setdefault("GST_REGISTRY", str(Path(tempfile.gettempdir()) / "qsock-python-gst-registry.bin"))
    return env


def require_gst():
    if shutil.which("gst-launch-1.0") is None:
        pytest.fail("gst-launch-1.0 is missing: scripts/setup installs gstreamer1.0-tools")
    if not (BUILD / "libgstqtisocket.so").exists():
        pytest.fail(f"{BUILD / 'libgstqtisocket.so'} is missing: run `cargo build --lib --bins` in {REPO}")


@pytest.fixture
def sock():
    """A short socket path (sun_path holds 107 bytes) in a fresh directory."""
    directory = tempfile.mkdtemp(prefix="qsock-py-", dir="/tmp")
    yield os.path.join(directory, "s.sock")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def receiver(sock):
    with qsock.Receiver(sock, timeout=10) as rx:
        yield rx


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def mappings():
    """(start, end, inode, path) of every mapping of this process."""
    result = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            result.append((start, end, int(fields[4]), fields[5].strip() if len(fields) > 5 else ""))
    return result


def address(array):
    return array.__array_interface__["data"][0]


def until_gone(rx):
    """Reads events until the sender hangs up (after its EOS it waits for its returns)."""
    while True:
        event = rx.recv()
        if event is qsock.SENDER_GONE:
            return
        assert event is qsock.EOS, f"expected only EOS before the hang-up, got {event!r}"
