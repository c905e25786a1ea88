#!/usr/bin/env python3
"""Read `smtp-sink -c` counters on stdin and time the Nth message.

smtp-sink -c writes `sess=S quit=Q mesg=M` followed by a carriage return
after every session end, QUIT and final "." (it flushes each one). This
reads that stream and, when mesg first reaches TARGET, writes
`<unix time> <mesg>` to DIR/reached. The current counts are kept in
DIR/count as `<mesg> <sess>` (rewritten at most every 0.2 s and at end
of input).

Usage: smtp-sink -c ... | sink-watch.py DIR TARGET
"""

import os
import sys
import time


def main() -> None:
    d = sys.argv[1]
    target = int(sys.argv[2])
    reached_path = os.path.join(d, "reached")
    count_path = os.path.join(d, "count")
    fd = sys.stdin.fileno()
    buf = b""
    mesg = 0
    sess = 0
    reached = False
    last_count_write = 0.0
    while True:
        chunk = os.read(fd, 65536)
        now = time.time()
        if not chunk:
            break
        buf += chunk
        parts = buf.split(b"\r")
        buf = parts[-1]
        for p in reversed(parts[:-1]):
            fields = dict(f.split(b"=", 1) for f in p.split() if b"=" in f)
            try:
                mesg = int(fields[b"mesg"])
                sess = int(fields.get(b"sess", sess))
            except (KeyError, ValueError):
                continue
            break
        if not reached and mesg >= target:
            reached = True
            with open(reached_path, "w") as f:
                f.write(f"{now:.6f} {mesg}\n")
        if now - last_count_write > 0.2:
            with open(count_path, "w") as f:
                f.write(f"{mesg} {sess}\n")
            last_count_write = now
    with open(count_path, "w") as f:
        f.write(f"{mesg} {sess}\n")


if __name__ == "__main__":
    main()
