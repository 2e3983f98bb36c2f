"""10,000 buffers with fds through a Python receiver that maps every one: the fd count,
the count of mappings of fds and the RSS stay flat, and every buffer goes back to the
sender."""

import gc

import pytest

import qsock
from conftest import finish, mappings, open_fds, replay, rss_kib, until_gone


def fd_mappings():
    """Mappings of files and memfds (a leaked buffer's would be one). Anonymous mappings
    are left out: Python's allocator maps and unmaps its arenas as objects come and go
    (reading /proc/self/maps into a list is enough to add one)."""
    return [m for m in mappings() if m[2] != 0]


@pytest.mark.parametrize(
    "capture,repeat,fds_per_round",
    [("video-nopool.jsonl", 2000, 5), ("video-pool.jsonl", 1250, 4)],  # 10,000 buffers each
)
def test_ten_thousand_buffers(receiver, sock, capture, repeat, fds_per_round):
    gc.collect()
    fds_before, maps_before = open_fds(), len(fd_mappings())
    child = replay(sock, capture, "--repeat", repeat)
    count = 0
    checksum = 0
    rss_after_warm_up = None
    for buf in receiver:
        y, uv = buf.planes()
        checksum += int(y[0, 0]) + int(uv[-1, -1, -1])
        count += 1
        if count == 1000:
            del y, uv
            gc.collect()
            rss_after_warm_up = rss_kib()
    del buf, y, uv
    gc.collect()
    rss_at_end = rss_kib()
    until_gone(receiver)
    code, out = finish(child, timeout=120)
    assert code == 0, f"not every buffer came back: {out}"
    assert count == repeat * (8 if capture == "video-pool.jsonl" else 5)
    stats = receiver.stats()
    assert stats["buffers"] == count and stats["returns_sent"] == count
    if capture == "video-nopool.jsonl":
        assert stats["fds_received"] == count  # every buffer came with its own fd
    else:
        assert stats["fds_received"] == repeat * fds_per_round  # the capture sends 4 fresh memfds a round
    # Flat: nothing per buffer stays behind.
    assert open_fds() == fds_before, "fds leaked"
    assert len(fd_mappings()) == maps_before, "mappings leaked"
    assert stats["mappings_cached"] == 0, "mappings of a gone sender's pool kept"
    growth = rss_at_end - rss_after_warm_up
    assert growth < 1024, f"RSS grew by {growth} KiB over 9,000 buffers"
