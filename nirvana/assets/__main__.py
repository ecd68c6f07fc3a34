"""CLI: `python -m nirvana.assets build [--only NAME ...] [--force]` | `... check [--deep] [--only NAME ...]`."""

from __future__ import annotations

import argparse
import sys
import time

from .. import paths
from . import OPTIONAL, STEPS, AssetError, build, check


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nirvana.assets", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build missing or invalid assets into the cache (idempotent)")
    b.add_argument(
        "--only",
        nargs="+",
        choices=list(STEPS),
        metavar="NAME",
        help=f"build only these steps ({', '.join(STEPS)}); optional ones ({', '.join(sorted(OPTIONAL))}) are "
        "built only when named here",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if the manifest says it is valid")
    c = sub.add_parser("check", help="report whether each asset is built and valid (exit 1 if not)")
    c.add_argument("--deep", action="store_true", help="also verify every file's sha256")
    c.add_argument("--only", nargs="+", choices=list(STEPS), metavar="NAME", help="check only these steps")
    args = ap.parse_args(argv)

    print(f"asset cache: {paths.cache_dir()}  (set NIRVANA_CACHE to move it)")
    t0 = time.perf_counter()
    if args.cmd == "build":
        try:
            done = build(args.only, force=args.force)
        except AssetError as exc:
            print(f"\nnirvana.assets: build failed: {exc}", file=sys.stderr)
            return 1
        verdict = "nothing to do, all up to date" if set(done.values()) == {"up to date"} else "done"
        print(f"{verdict} ({time.perf_counter() - t0:.1f} s)")
        return 0
    problems = check(deep=args.deep, only=args.only)
    for name, why in problems.items():
        print(f"  {name:<11} {'ok' if why is None else 'NOT OK: ' + why}")
    return 0 if all(why is None for why in problems.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
