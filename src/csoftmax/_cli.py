"""The command line: `python -m csoftmax` and the `csoftmax` console script.

    csoftmax info     show_config(): backends (and why one is unavailable), the C core's
                      instruction sets and threads, the optional libraries installed
    csoftmax check    a short self-test of every available backend against the reference
                      (csoftmax._selftest); exit status 1 on a mismatch
    csoftmax bench    the benchmarks (csoftmax._bench): the CPU one, and the GPU one where
                      the cuda backend is available; --help lists the options
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns the exit status."""
    from . import __version__

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="csoftmax", description="csoftmax: information, a self-test and benchmarks.")
    ap.add_argument("--version", action="version", version=f"csoftmax {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="{info,check,bench}")
    sub.add_parser("info", help="what this installation has and would use (show_config)")
    sub.add_parser("check", help="self-test every available backend against the reference; exit 1 on a mismatch")
    sub.add_parser("bench", help="benchmarks against the installed peers (see: csoftmax bench --help)",
                   add_help=False)
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        from . import _bench

        return _bench.main(argv[1:], prog="csoftmax bench")
    args = ap.parse_args(argv)
    if args.command == "info":
        from ._config import show_config

        show_config()
        return 0
    if args.command == "check":
        from . import _selftest

        return 1 if _selftest.run() else 0
    ap.print_help()
    return 2
