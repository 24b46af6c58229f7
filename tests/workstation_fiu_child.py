"""Run one workstation write (a hand-off log append, a CA creation) with the N-th call of a libfiu
point failing; print the outcome as JSON.

Started as ``fiu-run -x -f "" python workstation_fiu_child.py ...`` so libfiu's POSIX wrappers are
preloaded; the point is armed through libfiu's C API with a callback that fails exactly the N-th
call (errno from ``failinfo``), so the calls before it (the ones being tested past) succeed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository's tests
from tests.stick.fiu_helper import run_armed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["append", "ca"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--point", required=True)
    parser.add_argument("--at", type=int, default=1)
    parser.add_argument("--errno", default="EIO")
    args = parser.parse_args()
    if args.action == "append":
        from agent.handoff_log import HandoffLog

        log = HandoffLog(args.directory)
        action = lambda: log.append("handoff", time=datetime.now(UTC), outcome="ready")  # noqa: E731
    else:
        from agent.authority.ca import CertificateAuthority

        action = lambda: CertificateAuthority.load_or_create(args.directory)  # noqa: E731
    json.dump(run_armed(args.point, args.at, args.errno, action), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
