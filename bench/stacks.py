"""Where a stage's time goes, from a py-spy raw (collapsed-stack) profile.

Record (py-spy samples the running Python processes; children too with ``--subprocesses``)::

    py-spy record --subprocesses -r 50 -f raw -o /tmp/api.txt -- .venv/bin/python bench/api.py --seconds 15
    .venv/bin/python bench/stacks.py /tmp/api.txt --process "run api"

prints, for the samples of the processes whose command line contains ``--process`` (and, with ``--under``, only
the stacks passing through a frame containing that text), the share of samples spent inclusively in each of our
functions (services/, events/, projections/) and the share by library of the innermost frame (self time).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

OURS = re.compile(r"\((?:services|events|projections|bench)/")
LIB = re.compile(r"\(([A-Za-z_<][^/:)]*)")


def load(path: Path, process: str, under: str) -> list[tuple[list[str], int]]:
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        frames = head.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        if process and not any(process in p for p in procs):
            continue
        frames = [f for f in frames if not f.startswith("process ")]
        if under:
            cut = next((i for i, f in enumerate(frames) if under in f), None)
            if cut is None:
                continue
            frames = frames[cut:]
        stacks.append((frames, int(count)))
    return stacks


def library(frame: str) -> str:
    found = LIB.search(frame)
    return found.group(1) if found else frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--process", default="", help="only processes whose command line contains this")
    parser.add_argument("--under", default="", help="only stacks through a frame containing this (e.g. RxTrail.handle)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    stacks = load(args.profile, args.process, args.under)
    total = sum(n for _, n in stacks) or 1
    inclusive: Counter[str] = Counter()
    selfs: Counter[str] = Counter()
    for frames, n in stacks:
        for name in {re.sub(r":\d+\)$", ")", f) for f in frames if OURS.search(f)}:
            inclusive[name] += n
        if frames:
            selfs[library(frames[-1])] += n
    print(f"{total} samples")
    print("\ninclusive, our functions:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\nself time by module of the innermost frame:")
    for name, n in selfs.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
