"""``python -m agent.host.results RUN_DIR...``: (re)write the result files of finished runs."""

from __future__ import annotations

import argparse
import sys

from agent.host.results import ResultsError, write_all


def main(argv: list[str] | None = None) -> int:
    """Write the result files (KTAP, JUnit, KCIDB, HTML) of each run directory and print their
    paths; 1 if any directory could not be read."""
    parser = argparse.ArgumentParser(prog="python -m agent.host.results", description=__doc__)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a results/<run-id>/ directory")
    parser.add_argument("--results-url", default=None,
                        help="base URL the results are published under (kcidb.json log links)")
    args = parser.parse_args(argv)
    status = 0
    for run_dir in args.run_dirs:
        try:
            for path in write_all(run_dir, args.results_url).values():
                print(path)
        except ResultsError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
