"""``rayeffi run | submit | report | export | bench``: the command line.

User mistakes (:class:`~rayeffi.errors.UserError`) print one ``error: ...`` line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rayeffi.errors import UserError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors follow the same one-line rule
        raise UserError(f"{message} (see rayeffi {self.prog.split()[-1]} --help)")


BENCHMARK_NAMES = ("ddp", "dsd", "precision", "distill", "intra-layer", "pipeline", "ps", "prune-distill")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rayeffi", description="Efficient deep-network training recipes on Ray.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run every stage of a recipe")
    run.add_argument("recipe", help="YAML recipe (see examples/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe key, e.g. --set optimizer.lr=0.05 or stages.train.epochs=3")
    run.add_argument("--smoke", action="store_true", help="shrink to a CI-sized run (few epochs, samples, trials)")
    run.add_argument("--out", help="run directory (default: runs/RECIPE-TIMESTAMP)")
    run.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting a private one")
    run.add_argument("--storage", help="Ray Train storage: a path or a pyarrow URI such as s3://BUCKET/DIR (default: OUT/ray)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out: skip its completed stages, resume the interrupted one")

    submit = commands.add_parser("submit", help="submit a recipe as a Ray job to a running cluster")
    submit.add_argument("recipe", help="YAML recipe, inside the working directory that is uploaded")
    submit.add_argument("--address", required=True, help="the head's dashboard, e.g. http://HOST:8265")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (as for run)")
    submit.add_argument("--smoke", action="store_true", help="shrink to a CI-sized run")
    submit.add_argument("--out", help="run directory on the cluster (default: $HOME/rayeffi-runs/NAME-TIMESTAMP)")
    submit.add_argument("--storage", help="Ray Train storage on the cluster: shared path or URI (default: OUT/ray)")
    submit.add_argument("--working-dir", default=".", help="directory uploaded as the job's working directory")
    submit.add_argument("--wait", action="store_true", help="stream the job's logs; exit 0 if it SUCCEEDED, else 1")

    report = commands.add_parser("report", help="plot a finished run's curves as PNG files")
    report.add_argument("run_dir", help="a run directory holding summary.json")

    export = commands.add_parser("export", help="write a dsd stage's sparse weights compressed, and verify them")
    export.add_argument("run_dir", help="a run directory holding summary.json")
    export.add_argument("--stage", required=True, help="name of a dsd stage")
    export.add_argument("--format", choices=["bitmask", "csr"], default="bitmask",
                        help="bitmask + packed values (pays below ~97%% density) or CSR (below ~33%%)")
    export.add_argument("--out", help="output file (default: RUN_DIR/stages/STAGE/sparse-FORMAT.pt)")

    bench = commands.add_parser("bench", help="benchmarks that print a ratio against their baseline")
    bench.add_argument("name", choices=list(BENCHMARK_NAMES),
                       help="ddp: the train stage against native PyTorch DDP; dsd: DSD against dense baselines; "
                            "precision: fp32 vs bf16; distill: distilled student against the student alone; "
                            "intra-layer: split layers against unsplit, time and bytes; "
                            "pipeline: step time and bubble per micro-batch count against the unsplit model; "
                            "ps: parameter server sync/async against data parallelism and a one-actor baseline; "
                            "prune-distill: DSD with a distilling teacher against DSD alone")
    bench.add_argument("--workers", type=int, default=2, help="ddp: data-parallel workers")
    bench.add_argument("--seeds", type=int, default=5, help="dsd, distill, prune-distill: paired seeds")
    bench.add_argument("--sparsity", type=float, help="prune-distill: the DSD round's sparsity (default 0.5)")
    bench.add_argument("--regimes", nargs="*", help="dsd: which regimes (default: all)")
    bench.add_argument("--device", choices=("cpu", "cuda"), help="precision: where to measure (default: cuda if present)")
    bench.add_argument("--quick", action="store_true", help="fewer steps (a check that it runs, not a figure)")
    bench.add_argument("--stages", type=int, nargs="*", help="pipeline: stage counts K (default: 2 4)")
    bench.add_argument("--out", help="pipeline: where the JSON and Gantt charts go (default: runs/bench-pipeline)")
    return parser


def _run(args) -> int:
    from rayeffi.recipe import load_recipe
    from rayeffi.run import run_recipe

    recipe = load_recipe(args.recipe, args.overrides, smoke=args.smoke)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.out:
        raise UserError("--resume needs --out DIR: the run directory to continue")
    summary = run_recipe(recipe, out, address=args.address, storage=args.storage, resume=args.resume)
    print(f"summary: {out / 'summary.json'} ({summary['wall_s']:.1f} s)")
    return 0


def _report(args) -> int:
    from rayeffi.report import write_report

    for path in write_report(args.run_dir):
        print(path)
    return 0


def _export(args) -> int:
    from rayeffi.export import export_stage

    result = export_stage(args.run_dir, args.stage, args.format, args.out)
    print(f"wrote {result['path']} ({result['format']}, sparse phase of round {result['round']}, "
          f"target sparsity {result['target_sparsity']:.2f})")
    for name, sparsity in result["layer_sparsity"].items():
        print(f"  {name}: sparsity {sparsity:.4f}")
    print(f"size {result['bytes']:,} bytes against {result['dense_bytes']:,} dense "
          f"({result['bytes'] / result['dense_bytes']:.3f}x); loads back to identical weights: verified")
    return 0


def _bench(args) -> int:
    from rayeffi.bench import benchmark

    benchmark(args.name)(args)
    return 0


def _submit(args) -> int:
    from rayeffi.submit import submit

    return submit(args)


COMMANDS = {"run": _run, "report": _report, "export": _export, "bench": _bench, "submit": _submit}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
