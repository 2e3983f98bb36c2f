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

# Formats whose one plane holds R, G and B (and maybe A or x) in the order of the name;
# the others (NV12, I420, GRAY8, ...) have the brightness in their first plane, Y.
RGB_ORDERS = {"RGB", "BGR", "RGBA", "RGBx", "BGRA", "BGRx", "ARGB", "ABGR", "xRGB", "xBGR"}


def brightness(buf: qsock.Buffer, order: str) -> float:
    planes = buf.planes()
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
                video = buf.video
                if video is None:
                    print(f"(a {buf.kind} buffer)")
                    continue
                pts = "-" if buf.pts is None else f"{buf.pts / 1e9:.3f} s"
                level = brightness(buf, video.format)
                print(f"{pts:>10}  {video.format} {video.width}x{video.height}  brightness {level:6.2f}", flush=True)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
