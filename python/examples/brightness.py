#!/usr/bin/env python3
"""Prints the mean brightness of every video frame a sender sends, from numpy views of
the sender's memory (nothing is copied).

    python3 brightness.py /tmp/cam.sock
    # in another shell, any sender, e.g.:
    gst-launch-1.0 videotestsrc num-buffers=100 ! video/x-raw,format=NV12,width=1280,height=720 \\
        ! qtisocketsink socket=/tmp/cam.sock

Stops at the sender's EOS (or Ctrl-C); --keep-listening waits for the next sender.
"""

import argparse
import sys

import qsock

# Luma weights (BT.601) for the RGB-like formats; Y is the brightness of the YUV ones.
RGB_ORDERS = {"RGB", "BGR", "RGBA", "RGBx", "BGRA", "BGRx", "ARGB", "ABGR", "xRGB", "xBGR"}


def brightness(buf: qsock.Buffer) -> float:
    planes = buf.planes()
    order = buf.video.format
    if order not in RGB_ORDERS:  # NV12, I420, GRAY8, ...: the first plane is Y
        return float(planes[0].mean())
    pixels = planes[0]  # (height, width, 3 or 4), channels in the order the name gives
    r, g, b = (pixels[..., order.index(c)].mean() for c in "RGB")
    return float(0.299 * r + 0.587 * g + 0.114 * b)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("socket", help="socket path to listen on")
    parser.add_argument("--keep-listening", action="store_true", help="go on after EOS, across senders")
    args = parser.parse_args()
    with qsock.Receiver(args.socket, keep_listening=args.keep_listening) as receiver:
        print(f"listening on {args.socket}", file=sys.stderr, flush=True)
        try:
            for buf in receiver:
                if buf.kind != "video":
                    print(f"(a {buf.kind} buffer)")
                    continue
                video = buf.video
                pts = "-" if buf.pts is None else f"{buf.pts / 1e9:.3f} s"
                print(f"{pts:>10}  {video.format} {video.width}x{video.height}  brightness {brightness(buf):6.2f}",
                      flush=True)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
