"""Copy the committed results files into the READMEs' results blocks.

    python tools/sync_results.py        # rewrite the blocks that differ
    python tools/sync_results.py --check  # exit 1 if a block differs from its results file

A block is ``<!-- results: NAME -->`` ... ``<!-- end results -->``; its content is
``recipes/<recipe>/results/NAME.md`` of the recipe whose README holds it, or, in the top README,
``recipes/NAME.md`` (NAME such as ``multidomain_ukd/results/cpu``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kd.recipes.multidomain import readme_blocks, sync_readme  # noqa: E402


def readmes() -> list[tuple[Path, Path]]:
    """(README, results folder) pairs: each recipe's README with its own results/."""
    return [(ROOT / "README.md", ROOT / "recipes")] + [
        (r / "README.md", r / "results") for r in sorted((ROOT / "recipes").iterdir())
        if (r / "README.md").is_file() and (r / "results").is_dir()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when a block differs")
    args = parser.parse_args(argv)
    stale = []
    for readme, results in readmes():
        if args.check:
            blocks = readme_blocks(readme.read_text(encoding="utf-8"))
            stale += [f"{readme}: {n}" for n, body in blocks.items()
                      if not (results / f"{n}.md").is_file() or (results / f"{n}.md").read_text(encoding="utf-8") != body]
        else:
            stale += [f"{readme}: {n}" for n in sync_readme(readme, results)]
    for line in stale:
        print(("differs: " if args.check else "updated: ") + line)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
