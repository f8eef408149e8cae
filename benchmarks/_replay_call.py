"""One replayed tool call: hold memory and burn CPU on a schedule (stdlib only, run by file).

``python3 -S _replay_call.py '[[seconds, mib, cpu_fraction], ...]'``: for each step, grow or
shrink the memory held to ``mib`` MiB (1 MiB blocks, every page written), then for ``seconds``
spin ``cpu_fraction`` of each 10 ms slice and sleep the rest. Exits 0 when the schedule ends.
"""

import json
import sys
import time

MiB = 1 << 20
SLICE = 0.01


def main() -> None:
    steps = json.loads(sys.argv[1])
    held: list[bytearray] = []
    for seconds, mib, cpu in steps:
        mib = int(mib)
        while len(held) < mib:
            held.append(bytearray(MiB))  # zero-filled: every page touched
        del held[mib:]
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            spin_until = now + min(SLICE, end - now) * cpu
            while time.monotonic() < spin_until:
                pass
            rest = min(SLICE, end - now) * (1 - cpu)
            if rest > 0:
                time.sleep(rest)


if __name__ == "__main__":
    main()
