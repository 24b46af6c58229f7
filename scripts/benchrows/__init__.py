"""The benchmark's rows, a module per family, and what they share (kit.py; rig.py for the daemon rows).
Run through scripts/bench (scripts/bench.py: the command line, the table and the JSON)."""
