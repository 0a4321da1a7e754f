"""The disk's fsync latency in a directory: 200 appends of 4 KiB, each
followed by fdatasync; prints p50 and p99 (the figure BENCHMARKS.md gives
beside every result).

    python3 bench/fsync.py DIR
"""
import os, sys, time
p = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
t = []
for _ in range(200):
    a = time.perf_counter(); os.write(fd, b"x" * 4096); os.fdatasync(fd); t.append((time.perf_counter() - a) * 1000)
os.close(fd); os.unlink(p); t.sort()
print("fsync p50 %.2f ms p99 %.2f ms (4 KiB appends + fdatasync, 200 times)" % (t[100], t[197]))
