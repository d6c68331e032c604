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
from typing import Any

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
    for name in ("copy", "demo"):
        p = sub.add_parser(name, help=f"{name} (not implemented yet)")
        p.set_defaults(handler=_not_yet(name))
    _add_controller(sub)


# --- controller: the Kubernetes side of promote / rollback / status --------


def _add_controller(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controller", help="run the Promotion controller (in-cluster operator)")
    p.set_defaults(handler=_controller)
    p = sub.add_parser("promote", help="promote a model ref and follow the promotion")
    p.add_argument("ref", type=Path, help="model ref JSON, e.g. model_refs/model.json")
    p.add_argument("--kube", action="store_true", help="through a Promotion in the cluster")
    p.add_argument("--no-follow", action="store_true", help="create it and return")
    p.add_argument("--skip-drift-gate", action="store_true")
    p.add_argument("--reason", default="", help="kept in the Promotion's spec")
    p.set_defaults(handler=_kube_only("promote", _promote_kube))
    p = sub.add_parser("rollback", help="flip the API back to the previous colour")
    p.add_argument("--kube", action="store_true", help="through a Promotion in the cluster")
    p.add_argument("--no-follow", action="store_true", help="create it and return")
    p.set_defaults(handler=_kube_only("rollback", _rollback_kube))
    p = sub.add_parser("status", help="active colour, version, digest and the last promotions")
    p.add_argument("--kube", action="store_true", help="of the release in the cluster")
    p.set_defaults(handler=_kube_only("status", _status_kube))


def _kube_only(name: str, kube_handler: Handler) -> Handler:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        return kube_handler(args, settings) if args.kube else _not_yet(name)(args, settings)

    return handler


def _controller(args: argparse.Namespace, settings: Settings) -> int:
    import logging

    from flipserve import controller

    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    return controller.run(settings)


def _start_and_follow(args: argparse.Namespace, settings: Settings, spec: dict[str, Any]) -> int:
    from flipserve import promotions
    from flipserve.kube import Kube

    kube = Kube.from_settings(settings)
    name = promotions.create(kube, settings.release, spec)
    print(f"promotion {name} created in {settings.namespace}")
    if args.no_follow:
        return 0
    status = promotions.follow(kube, name, print)
    wanted = "RolledBack" if spec.get("rollback") else "Promoted"
    return 0 if status.get("phase") == wanted else 1


def _promote_kube(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import promotions

    spec: dict[str, Any] = {"modelRef": promotions.model_ref_from_file(args.ref)}
    if args.skip_drift_gate:
        spec["skipDriftGate"] = True
    if args.reason:
        spec["reason"] = args.reason
    return _start_and_follow(args, settings, spec)


def _rollback_kube(args: argparse.Namespace, settings: Settings) -> int:
    return _start_and_follow(args, settings, {"rollback": True})


def _status_kube(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import promotions
    from flipserve.kube import Kube

    print(promotions.status_table(Kube.from_settings(settings), settings.release))
    return 0


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
