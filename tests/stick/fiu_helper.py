"""Run one write under libfiu with a failure armed in-process; print the outcome as JSON.

Started as ``fiu-run -x -f "" python fiu_helper.py ...`` so libfiu's POSIX wrappers are
preloaded; the failure point is then enabled through libfiu's C API (ctypes) with an
external callback that fails exactly the N-th call, setting errno through ``failinfo``.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import sys

from agent.errors import PanostageError
from agent.stick import open_target

CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_int),
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.POINTER(ctypes.c_uint),
)


LIB = ctypes.CDLL("libfiu.so.0")


def arm(point: str, at: int, err: int) -> list[int]:
    lib = LIB
    lib.fiu_enable_external.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, CALLBACK]
    calls = [0]

    def decide(name, failnum, failinfo, flags):
        calls[0] += 1
        return 1 if calls[0] == at else 0

    arm.keep = CALLBACK(decide)  # keep the trampoline alive
    if lib.fiu_enable_external(point.encode(), 1, ctypes.c_void_p(err), 0, arm.keep) != 0:
        raise SystemExit(f"cannot enable {point}")
    return calls


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--name", required=True)
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--point", required=True)
    parser.add_argument("--at", type=int, default=1)
    parser.add_argument("--errno", default="EIO")
    parser.add_argument("--allow-non-fat", action="store_true")
    args = parser.parse_args()
    data = bytes([0x5A]) * args.size
    with open_target(args.spec, allow_non_fat=args.allow_non_fat) as target:
        result = run_armed(args.point, args.at, args.errno, lambda: target.write_atomic(args.name, data))
    json.dump(result, sys.stdout)
    return 0


def run_armed(point: str, at: int, err: str, action) -> dict:
    """Run ``action`` with the ``at``-th call of ``point`` failing with ``err``: its outcome as a dict."""
    result: dict = {"ok": True}
    calls = arm(point, at, getattr(errno, err))
    try:
        action()
    except PanostageError as exc:
        result = {
            "ok": False,
            "error": exc.to_dict(),
            "step": getattr(exc, "step", None),
            "errno": getattr(exc, "errno", None),
        }
    finally:
        LIB.fiu_disable(point.encode())
    result["calls"] = calls[0]
    return result


if __name__ == "__main__":
    sys.exit(main())
