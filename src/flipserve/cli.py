"""The ``flipserve`` command line.

Each subcommand is a small function that builds its objects from settings
and calls into the package; heavy imports (torch, transformers, boto3,
kubernetes) happen inside the handlers so ``flipserve --help`` and
``flipserve refs validate`` stay fast. Every FlipserveError becomes one
``flipserve: error: ...`` line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from flipserve import __version__
from flipserve.errors import FlipserveError
from flipserve.settings import Settings, get_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _not_yet(name: str) -> Handler:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        print(f"flipserve {name}: not implemented yet", file=sys.stderr)
        return 3

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flipserve",
        description="Blue/green serving for transformer text models, gated on score and drift.",
    )
    parser.add_argument("--version", action="version", version=f"flipserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_foundation(sub)
    _add_server(sub)
    _add_promotion(sub)
    return parser


# --- foundation: refs, train, evaluate, publish, fetch ---------------------


def _add_foundation(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in ("refs", "train", "evaluate", "publish", "fetch"):
        p = sub.add_parser(name, help=f"{name} (not implemented yet)")
        p.set_defaults(handler=_not_yet(name))


# --- server ----------------------------------------------------------------


def _add_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="serve (not implemented yet)")
    p.set_defaults(handler=_not_yet("serve"))


# --- promotion: copy, promote, rollback, status, controller, demo ----------


def _add_promotion(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name in ("copy", "promote", "rollback", "status", "controller", "demo"):
        p = sub.add_parser(name, help=f"{name} (not implemented yet)")
        p.set_defaults(handler=_not_yet(name))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args, get_settings())
    except FlipserveError as e:
        print(f"flipserve: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("flipserve: interrupted", file=sys.stderr)
        return 130
