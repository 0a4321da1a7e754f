"""How long each moved group went unserved, from the nodes' logs: every
time a node stopped serving it after the first move began, to the first
time a node served it again after that (both nodes on one machine's
clock). A move of a leading member pauses its group once (the lead handed
off); the new voters may then hand the lead to the group's preferred voter
(a second, same kind of pause).

    python3 bench/unserved.py WORK_DIR MOVES
"""
import datetime
import glob
import os
import re
import sys

work, moves = sys.argv[1], int(sys.argv[2])
ansi = re.compile(r"\x1b\[[0-9;]*m")
line_re = re.compile(r"(\S+Z)\s+INFO .*?(stopped serving the group|serving the group).*?group=(\d+)")
move_re = re.compile(r"(\S+Z)\s+INFO .*moving a group member")
events = []  # (time, node, what, group)
first_move = None
for path in glob.glob(os.path.join(work, "node*.log")):
    node = os.path.basename(path)[4:-4]
    for line in open(path, errors="replace"):
        plain = ansi.sub("", line)
        mv = move_re.match(plain)
        if mv:
            t = datetime.datetime.fromisoformat(mv.group(1).replace("Z", "+00:00"))
            first_move = t if first_move is None else min(first_move, t)
        m = line_re.match(plain)
        if m:
            t = datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
            events.append((t, node, m.group(2), int(m.group(3))))
events.sort()
events = [e for e in events if first_move is not None and e[0] >= first_move]
for g in range(moves):
    stops = [e for e in events if e[3] == g and e[2] == "stopped serving the group"]
    if not stops:
        print(f"    group {g}: never stopped being served")
    for stop in stops:
        after = [e for e in events if e[3] == g and e[2] == "serving the group" and e[0] >= stop[0]]
        if not after:
            print(f"    group {g}: node {stop[1]} stopped serving it; not served again")
            continue
        gap = (after[0][0] - stop[0]).total_seconds() * 1000
        print(f"    group {g}: node {stop[1]} stopped serving it, node {after[0][1]} served it {gap:.1f} ms later")
