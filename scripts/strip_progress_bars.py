"""Remove saved tqdm progress bars from the committed source notebooks, without re-executing them.

    python scripts/strip_progress_bars.py          # rewrite notebooks/NN_*.ipynb in place
    python scripts/strip_progress_bars.py --check  # exit 1 if any notebook still carries one

Only outputs that are nothing but a bar are dropped (an Explorer's PNG is kept); every other
byte of the file is unchanged (nbformat round-trips these files exactly). Regenerates the
student notebooks afterwards (their outputs are cleared anyway, so they do not change).
"""
from __future__ import annotations

import argparse
import sys

import nbformat

from mi_tutor.notebooks import source_notebooks, strip_progress_bars


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report; exit 1 if a bar is found")
    args = ap.parse_args(argv)
    found = 0
    for path in source_notebooks():
        nb = nbformat.read(str(path), as_version=4)
        n = strip_progress_bars(nb)
        if n:
            found += n
            print(f"{path.name}: {n} progress bar(s){'' if args.check else ' removed'}")
            if not args.check:
                nbformat.write(nb, str(path))
    return 1 if (args.check and found) else 0


if __name__ == "__main__":
    sys.exit(main())
