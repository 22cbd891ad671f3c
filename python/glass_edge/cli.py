"""glass-edge command line: argparse subcommands only; each calls one function elsewhere."""
from __future__ import annotations

import argparse
import sys

from .selection import METHODS


class _Parser(argparse.ArgumentParser):
    """argparse, but bad input is one line on stderr and exit code 2."""

    def error(self, message):
        self.exit(2, f"glass-edge: error: {message}\n")


def _density(text: str) -> float:
    try:
        d = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"density must be a number in (0, 1], got {text!r}") from None
    if not (0.0 < d <= 1.0):
        raise argparse.ArgumentTypeError(f"density must be in (0, 1], got {text}")
    return d


def _method(text: str) -> str:
    if text not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; choose one of {', '.join(METHODS)}")
    return text


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="glass-edge", description="Sparse-FFN (GLASS) llama.cpp decode on CPUs")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="generate text from a prompt")
    run.add_argument("model", nargs="?", help="GGUF model (default: the bundled gemma-3-270m)")
    run.add_argument("-p", "--prompt", default="The three most useful things to know about the ocean are")
    run.add_argument("-n", "--n-predict", type=_positive_int, default=128, help="tokens to generate")
    run.add_argument("--density", type=_density, default=0.5, help="fraction of FFN neurons kept, (0, 1]")
    run.add_argument("--method", type=_method, default="griffin", help=f"one of {', '.join(METHODS)}")
    run.add_argument("-t", "--threads", type=_positive_int, default=None)
    run.add_argument("-c", "--ctx-size", type=_positive_int, default=2048)
    run.add_argument("-s", "--seed", type=int, default=-1)
    run.add_argument("--temp", type=float, default=0.8)
    run.add_argument("--top-k", type=int, default=40)
    run.add_argument("--top-p", type=float, default=0.95)
    run.add_argument("--verbose", action="store_true", help="show llama.cpp's log")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from . import run as run_mod  # imports llama.cpp: keep --help fast
    try:
        if args.command == "run":
            return run_mod.run(args)
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except run_mod.UserError as e:
        print(f"glass-edge: error: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
