"""The stubs describe the module as it is (mypy.stubtest), and code using qsock type-checks
under mypy --strict: the example, and a snippet that uses every part of the API."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is installed by python/test.sh")
HERE = Path(__file__).resolve().parent


def mypy(*args):
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd="/tmp")
    return result.returncode, result.stdout + result.stderr


def test_the_stubs_match_the_module():
    # pyo3 classes are disjoint bases (PEP 800); `__all__` is the package's, not the module's.
    code, out = mypy("mypy.stubtest", "qsock._qsock", "--ignore-disjoint-bases")
    problems = [line for line in out.splitlines() if line.startswith("error") and "__all__" not in line]
    assert not problems, out


def test_code_using_qsock_type_checks(tmp_path):
    snippet = tmp_path / "use.py"
    snippet.write_text(textwrap.dedent(
        """
        import numpy as np
        import numpy.typing as npt
        import qsock

        def receive(path: str) -> float:
            total = 0.0
            with qsock.Receiver(path, timeout=1.0, allowed_uids=[1000], keep_listening=False) as rx:
                for buf in rx:
                    video = buf.video
                    if video is not None:
                        y: npt.NDArray[np.generic] = buf.planes()[0]
                        total += float(y.mean()) + video.planes[0].stride
                    for tensor in buf.tensors() if buf.kind == "tensor" else []:
                        total += float(tensor.sum())
                    rois: list[qsock.RegionOfInterest] = buf.rois
                    text: str | None = buf.text
                    buf.release()
                event = rx.recv(timeout=None)
                if event is qsock.EOS or event == qsock.SENDER_GONE:
                    pass
            return total

        def send(path: str) -> None:
            with qsock.Sender(path, pool_size=4) as tx:
                tx.send_video([np.zeros((4, 4), np.uint8), np.zeros((2, 2, 2), np.uint8)], format="NV12", pts=0,
                              metas=[qsock.RegionOfInterest("car", 0, 0, 2, 2), qsock.Protection("p;")])
                with tx.frame(4, 4, "GRAY8") as frame:
                    frame.planes()[0][:] = 1
                tx.send_tensors([np.zeros(3, np.float32)])
                tx.send_text("hi")
                tx.eos()
                tx.flush(timeout=1.0)
                stats: dict[str, int | bool] = tx.stats()

        def fan_out(directory: str) -> int:
            with qsock.FanoutSender(directory, max_in_flight=None, slow_receiver="wait", pool_size=8) as tx:
                n: int = tx.send_video(np.zeros((4, 4), np.uint8), format="GRAY8")
                with tx.frame(4, 4, "GRAY8") as frame:
                    frame.planes()[0][:] = 1
                got: int | None = frame.receivers
                n += tx.send_tensors([np.zeros(3, np.float32)]) + tx.send_text("hi") + tx.eos()
                tx.flush(timeout=1.0)
                for receiver in tx.stats["receivers"]:
                    n += receiver["in_flight"] + receiver["skipped"] + (receiver["pid"] or 0)
                socket: str = tx.stats["receivers"][0]["socket"]
                return n + tx.stats["dropped"] + tx.receivers
        """
    ))
    for target in (snippet, HERE.parent / "examples" / "brightness.py"):
        code, out = mypy("mypy", "--strict", "--no-incremental", str(target))
        assert code == 0, out
