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
from pathlib import Path
from typing import cast

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
    p = sub.add_parser(
        "serve",
        help="serve the model on a volume (KServe v1/v2, /predict, /drift, /feedback, /metrics)",
    )
    p.add_argument(
        "--model-dir",
        type=Path,
        help="volume with READY and model/ (default: FLIPSERVE_MODEL_DIR)",
    )
    p.add_argument("--port", type=int, help="HTTP port (default: FLIPSERVE_HTTP_PORT)")
    p.set_defaults(handler=_serve)


def _feedback_sink(settings: Settings) -> Callable[[list[dict[str, str]]], object] | None:
    """The store's ``append_feedback`` when it has one, else a directory for a file:// root."""
    try:
        from flipserve import store  # type: ignore[attr-defined, unused-ignore]

        append = store.open_store(settings).append_feedback  # type: ignore[attr-defined, unused-ignore]
    except (ImportError, AttributeError, FlipserveError):
        append = None
    if append is not None:
        return cast(Callable[[list[dict[str, str]]], object], append)
    if settings.store_uri.startswith("file://"):
        from flipserve.server.feedback import DirectoryFeedbackSink

        root = Path(settings.store_uri.removeprefix("file://"))
        return DirectoryFeedbackSink(root, settings.feedback_prefix)
    return None


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    updates: dict[str, object] = {}
    if args.model_dir is not None:
        updates["model_dir"] = args.model_dir
    if args.port is not None:
        updates["http_port"] = args.port
    settings = settings.model_copy(update=updates)
    # KServe parses sys.argv when imported; ours are not its options.
    sys.argv = sys.argv[:1]
    from flipserve.server.model import FlipserveModel
    from flipserve.server.runtime import FlipserveServer

    model = FlipserveModel(settings, settings.model_dir, feedback_sink=_feedback_sink(settings))
    FlipserveServer(settings).serve(model)
    return 0


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
