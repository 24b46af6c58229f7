"""``block.py MARKER -- ARGV...``: announce this process in MARKER (its pid), then wait until killed.

Stands in for an mtools child that hangs (a stick that stopped answering): the parent is
deterministically inside that child when the test acts on MARKER.  ARGV is never run.
"""

import os
import signal
import sys

marker = sys.argv[1]
with open(marker + ".tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.rename(marker + ".tmp", marker)
while True:
    signal.pause()
