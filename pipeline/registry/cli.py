"""`python -m pipeline.registry`: the command line over `pipeline.registry.versions`."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.cli import local_out, non_negative_float, positive_int
from pipeline.registry import versions
from pipeline.registry.history import ReviewConflict
from pipeline.registry.names import (CHALLENGER, CHAMPION, DEFAULT_IMPORT_EXPERIMENT, DEFAULT_NAME, RegistryError,
                                     ReviewRefused, candidates_of, served_of)
from pipeline.registry.promotion import review
from pipeline.registry.versions import best_trial_run, list_versions, register_run, show_version


def _print_rows(rows: list[dict[str, Any]], cols: list[str]) -> None:
    cells = [[", ".join(r[c]) if isinstance(r[c], list) else str(r[c]) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(f"{c:<{w}}" for c, w in zip(cols, widths)))
    for row in cells:
        print("  ".join(f"{v:<{w}}" for v, w in zip(row, widths)))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", help="MLflow tracking/registry URI (default $MLFLOW_TRACKING_URI "
                                               "or sqlite:///<repo>/runs/mlflow.db)")
    common.add_argument("--model", "--name", dest="name", default=DEFAULT_NAME,
                        help="served registered model; training registers into <model>-candidates")
    p = argparse.ArgumentParser(prog="python -m pipeline.registry", description=versions.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("register", parents=[common], help="register a run's logged model as @challenger")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-id", help="training run (or a sweep trial's run)")
    src.add_argument("--best-of", metavar="PARENT_RUN_ID", help="a sweep's parent run: register its best trial")
    r.add_argument("--best-metric", default="val_accuracy")
    r.add_argument("--mode", choices=("max", "min"), default="max")
    r.add_argument("--alias", default=CHALLENGER, help="alias for the new version ('' for none)")

    v = sub.add_parser("review", parents=[common], help="evaluate @champion vs @challenger; optionally promote")
    v.add_argument("--shards", required=True, help="ingest output root the models are compared on")
    v.add_argument("--split", default="test")
    v.add_argument("--metric", default="accuracy", help="accuracy | mean_class_accuracy | macro_f1 | recall_<class>")
    v.add_argument("--margin", type=non_negative_float, default=0.0, help="challenger must beat champion by more than this")
    v.add_argument("--promote", action="store_true", help="move @champion when the challenger wins")
    v.add_argument("--force", action="store_true", help="promote even if it does not win (needs --reason)")
    v.add_argument("--reason", default="", help="why (required with --force; recorded on the versions)")
    v.add_argument("--allow-other-shards", action="store_true",
                   help="compare on shards whose manifest differs from the training one")
    v.add_argument("--batch-size", type=positive_int, default=64)
    v.add_argument("--out", type=local_out, help="also write report.txt, review.json and confusion PNGs here")

    sub.add_parser("list", parents=[common], help="candidate versions (champion marked), aliases, key metrics")
    sub.add_parser("migrate", parents=[common],
                   help="single-model registry -> candidates + served (moves @challenger to <model>-candidates)")
    s = sub.add_parser("show", parents=[common], help="one version's tags and model card")
    s.add_argument("version", help="candidate version number or alias (@challenger); @champion or "
                                   "<model>:N for a served version")

    g = sub.add_parser("log-model", parents=[common],
                       help="log a finished fit's model from its checkpoint (after a tracking outage)")
    g.add_argument("--run-id", required=True, help="the training run (tag poster.model_logged=false)")
    g.add_argument("--checkpoint", required=True, help="the fit's checkpoint folder (printed by pipeline.train)")

    o = sub.add_parser("import-official", parents=[common], help="register an official POSTER checkpoint")
    o.add_argument("--checkpoint", required=True, help="rafdb_best.pth-style file")
    o.add_argument("--variant", default="large", choices=("small", "base", "large", "v2"),
                   help="official family/size: small/base/large (POSTER V1) or v2 (POSTER V2)")
    o.add_argument("--dataset", default="rafdb", help="rafdb | affectnet7 | affectnet8 (label order, BGR)")
    o.add_argument("--classes", help="comma-separated target class order (default: canonical order)")
    o.add_argument("--shards", help="take the target class order from this manifest instead")
    o.add_argument("--experiment", default=DEFAULT_IMPORT_EXPERIMENT)
    o.add_argument("--alias", default=CHALLENGER)
    o.add_argument("--no-register", action="store_true", help="only create the run and log the model")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _cmd_register(args: argparse.Namespace) -> None:
    run_id = args.run_id or best_trial_run(args.best_of, args.tracking_uri, args.best_metric, args.mode)
    version = register_run(run_id, args.tracking_uri, args.name, args.alias or None)
    cands = candidates_of(args.name)
    print(f"registered run {run_id} as {cands} v{version}" + (f" @{args.alias}" if args.alias else ""))
    print(f"load: mlflow.pyfunc.load_model('models:/{cands}/{version}'); a review promotes it into "
          f"{served_of(args.name)}@{CHAMPION}")


def _cmd_review(args: argparse.Namespace) -> None:
    from pipeline.storage import preflight

    preflight(args.shards, "--shards", must_exist=True)
    res = review(args.name, args.shards, args.split, args.metric, args.margin, args.promote, args.force,
                 args.reason, args.allow_other_shards, args.tracking_uri, args.batch_size, args.out)
    print(res.report)
    if res.promoted:
        print(f"\n{res.name}@{CHAMPION} -> v{res.served_version} (copy of {res.challenger.model} "
              f"v{res.challenger.version})")


def _cmd_list(args: argparse.Namespace) -> None:
    rows = list_versions(args.name, args.tracking_uri)
    if not rows:
        print(f"{args.name}: no versions")
        return
    _print_rows(rows, ["version", "aliases", "served", "created", "variant", "test_accuracy", "test_macro_f1",
                       "review_accuracy", "decision", "run_id"])


def _cmd_show(args: argparse.Namespace) -> None:
    info = show_version(args.version, args.name, args.tracking_uri)
    print(f"{info['name']} v{info['version']}  aliases: {', '.join(info['aliases']) or '-'}")
    print(f"uri: {info['uri']}   source: {info['source']}   run: {info['run_id']}   created: {info['created']}")
    print("tags:")
    for k, v in info["tags"].items():
        print(f"  {k} = {v}")
    if info["description"]:
        print("\n" + info["description"])


def _cmd_import_official(args: argparse.Namespace) -> None:
    from pipeline.registry.import_official import import_official  # torch + MLflow: only when needed
    from pipeline.schema import read_manifest

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if args.shards and not classes:
        classes = list(read_manifest(args.shards)["classes"])
    res = import_official(args.checkpoint, args.variant, args.dataset, args.tracking_uri, args.experiment,
                          args.name, args.alias or None, not args.no_register, classes)
    print(f"imported {args.checkpoint} as run {res.run_id}; model {res.model_uri}; "
          f"classes {','.join(res.classes)}")
    if res.version:
        print(f"registered as {candidates_of(args.name)} v{res.version}" + (f" @{args.alias}" if args.alias else ""))


def _cmd_log_model(args: argparse.Namespace) -> None:
    from pipeline.registry.names import resolve_uri
    from pipeline.train.model_log import log_model_later

    uri = log_model_later(args.run_id, args.checkpoint, resolve_uri(args.tracking_uri))
    print(f"logged {uri} into run {args.run_id}")
    print(f"register it: python -m pipeline.registry register --run-id {args.run_id}")


def _cmd_migrate(args: argparse.Namespace) -> None:
    from pipeline.registry.migrate import migrate

    print(migrate(args.name, args.tracking_uri))


COMMANDS = {"register": _cmd_register, "review": _cmd_review, "list": _cmd_list, "show": _cmd_show,
            "import-official": _cmd_import_official, "log-model": _cmd_log_model,
            "migrate": _cmd_migrate}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # bad flags are refused before MLflow/torch are imported

    from mlflow.exceptions import MlflowException

    from pipeline.evaluate.report import quiet_mlflow

    quiet_mlflow()
    try:
        COMMANDS[args.cmd](args)
    except ReviewConflict as e:
        print(f"conflict: {e}", file=sys.stderr)
        return 4
    except ReviewRefused as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3
    except (RegistryError, FileNotFoundError, ValueError, MlflowException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
