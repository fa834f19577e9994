"""The paper's case analysis on the CPU (the same as `sync-splat case-study`): every synchronisation case over every
projection type with the exact Gaussian-texture prior; Markdown tables, a PNG grid per setting, a RESULT line.

    python scripts/case_study.py --out outputs/case-study [--seeds 16] [--num-steps 50] [--size 16]
"""

import sys

from sync_splat.cli import entrypoint

if __name__ == "__main__":
    entrypoint(["case-study", *sys.argv[1:]])
