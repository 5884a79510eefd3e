"""``rayeffi run | submit | report | export | bench``: the command line.

User mistakes (:class:`~rayeffi.errors.UserError`) print one ``error: ...`` line and
exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from rayeffi.bench import BENCHMARK_NAMES  # a name table: importing it loads no benchmark
from rayeffi.errors import UserError
from rayeffi.health import HealthStop, check_final

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors follow the same one-line rule
        command = " ".join(self.prog.split()[1:])  # "rayeffi run" -> "run"; the top level has none
        raise UserError(f"{message} (see rayeffi {command + ' ' if command else ''}--help)")



def _version() -> str:
    from rayeffi import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rayeffi", description="Efficient deep-network training recipes on Ray.")
    parser.add_argument("--version", action="version", version=f"rayeffi {_version()}")
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
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --out (without it, an --out holding a run is refused)")

    validate = commands.add_parser("validate", help="every check run makes before training, and the plan; no training")
    validate.add_argument("recipe", help="YAML recipe (see examples/)")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a recipe key (as for run)")
    validate.add_argument("--smoke", action="store_true", help="check the CI-sized run")
    validate.add_argument("--address", help="also check that this Ray cluster has the CPUs and GPUs the recipe reserves")

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

    init = commands.add_parser("init", help="write a starter recipe and model file that run as they are")
    init.add_argument("folder", nargs="?", default=".", help="where to write recipe.yaml and my_model.py (default: .)")

    commands.add_parser("schema", help="print the recipe's JSON Schema (for an editor's completion and checks)")

    evaluate = commands.add_parser("evaluate", help="score a finished run's model on other data")
    evaluate.add_argument("run_dir", help="a run directory holding summary.json")
    evaluate.add_argument("--data", required=True, help="Parquet file or folder with the training data's columns")
    evaluate.add_argument("--stage", help="which stage's model (default: the last finished)")

    report = commands.add_parser("report", help="plot a run's curves as PNG files and write report/index.html")
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
                            "prune-distill: DSD with a distilling teacher against DSD alone; "
                            "scaling: epoch time and samples/s as rows, width, workers and nodes grow; "
                            "startup: the quickstart's wall time in local mode against 2 workers; "
                            "compile: eager against torch.compile per model family, and a DSD run's recompiles; "
                            "memory: activation memory and step time with and without activation checkpointing; "
                            "soak: memory and open descriptors of the driver and Ray's processes over a long run")
    bench.add_argument("--workers", type=int, default=2, help="ddp, startup: data-parallel workers")
    bench.add_argument("--repeats", type=int, default=3, help="startup: runs of each command (the median counts)")
    bench.add_argument("--cpu-share", action="store_true",
                       help="ddp: which processes used the CPUs during each arm's steady epochs (Linux /proc)")
    bench.add_argument("--seeds", type=int, default=5, help="dsd, distill, prune-distill: paired seeds")
    bench.add_argument("--dataset", choices=("digits", "mnist"), default="digits",
                       help="distill: the built-in 8x8 digits, or the 5,000 28x28 MNIST digits (Hinton's setting)")
    bench.add_argument("--sparsity", type=float, help="prune-distill: the DSD round's sparsity (default 0.5)")
    bench.add_argument("--workload", choices=("mlp", "lm", "lstm"), default="mlp",
                       help="dsd: mlp on the digits (default), lm or lstm on the built-in text; distill: mlp or lm")
    bench.add_argument("--regimes", nargs="*", help="dsd: which regimes (default: all)")
    bench.add_argument("--device", choices=("cpu", "cuda"), help="precision: where to measure (default: cuda if present)")
    bench.add_argument("--quick", action="store_true", help="fewer steps (a check that it runs, not a figure)")
    bench.add_argument("--timeout", type=float, default=3600.0,
                       help="seconds before the benchmark is stopped with a message (default 3600)")
    bench.add_argument("--stages", type=int, nargs="*", help="pipeline: stage counts K (default: 2 4)")
    bench.add_argument("--minutes", type=float, default=30.0, help="soak: how long the run (or the runs) last")
    bench.add_argument("--repeat", action="store_true",
                       help="soak: the short recipe again and again in one driver, instead of one long run")
    bench.add_argument("--only", choices=("dense", "dsd", "tuned"),
                       help="soak: the long run holds this stage alone (default: all three)")
    bench.add_argument("--budget-mib", type=float, default=256,
                       help="memory: the peak memory budget the largest batch must fit (default 256)")
    bench.add_argument("--out", help="pipeline, scaling: where the JSON and the charts go (default: runs/bench-NAME); "
                                     "soak: where its samples go, as soak-samples.json (default: not kept)")
    return parser


def _run(args) -> int:
    from rayeffi.recipe import load_recipe
    from rayeffi.driver.run import run_recipe

    recipe = load_recipe(args.recipe, args.overrides, smoke=args.smoke)
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not args.out:
        raise UserError("--resume needs --out DIR: the run directory to continue")
    check_out_dir(out)
    created = _first_missing(out)
    out.mkdir(parents=True, exist_ok=True)  # from here on, a missing run directory was deleted
    try:
        with interrupts_as_keyboard_interrupt():
            summary = run_recipe(recipe, out, address=args.address, storage=args.storage, resume=args.resume,
                                 overwrite=args.overwrite)
    except KeyboardInterrupt:  # run_recipe has stopped the workers and its private Ray on the way out
        diverged = HealthStop.take()
        if diverged:  # stopped by the driver's health check (rayeffi/health.py), not by the user
            raise UserError(diverged) from None
        return _interrupted(recipe, out, args)
    except UserError:
        _remove_if_empty(out, created)  # a run refused before it started leaves no empty directory behind
        raise
    except Exception as exc:
        if SIGNALLED.is_set():
            # a terminal's Ctrl-C reaches the whole process group: Ray's own processes stop too, and
            # the driver may see their end (an actor died) before or instead of its KeyboardInterrupt
            return _interrupted(recipe, out, args)
        if not out.is_dir():  # deleted (or replaced) while the stages ran: the failure follows from that
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            raise UserError(f"--out {out}: the run directory was deleted while the run was going "
                            f"({type(exc).__name__}: {detail}); start again with rayeffi run ... --out DIR") from None
        raise
    print(f"summary: {out / 'summary.json'} ({summary['wall_s']:.1f} s)")
    for stage in summary["stages"]:
        diverged = check_final(stage.get("metrics") or {})
        if diverged:
            raise UserError(f"stages.{stage['name']}: {diverged}")
    return 0


def _validate(args) -> int:
    from rayeffi.recipe import load_recipe
    from rayeffi.driver.plan import validate_run

    recipe = load_recipe(args.recipe, args.overrides, smoke=args.smoke)
    for line in validate_run(recipe, args.address):
        print(line)
    return 0


def _first_missing(path: Path) -> Path | None:
    """The topmost directory of ``path`` that does not exist yet (None: it all exists)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def _remove_if_empty(out: Path, first_created: Path | None) -> None:
    """Remove ``out`` and the parents this run created, as long as they are empty."""
    if first_created is None:
        return
    path = out
    while path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path == first_created:
            return
        path = path.parent


SIGNALLED = threading.Event()
"""Set by the first Ctrl-C or SIGTERM of a run (whatever exception it then surfaces as)."""


@contextlib.contextmanager
def interrupts_as_keyboard_interrupt():
    """Ctrl-C (SIGINT) and SIGTERM both stop the run the same way, once.

    The first signal raises KeyboardInterrupt in the driver, whose ``finally`` blocks
    stop the workers and the private Ray; further signals are ignored so that a second
    Ctrl-C cannot cut that cleanup short (the watchdog of rayeffi/driver/supervise.py removes
    whatever a harder kill leaves).
    """
    def stop(signum, frame):
        SIGNALLED.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    SIGNALLED.clear()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupted(recipe, out: Path, args) -> int:
    mark_interrupted(recipe, out, args.storage)
    print(f"interrupted: resume with rayeffi run {_resume_command(args, out)}", file=sys.stderr)
    return EXIT_INTERRUPTED


def mark_interrupted(recipe, out: Path, storage: str | None) -> None:
    """Leave a ``summary.json`` that ``--resume`` accepts: status ``interrupted``, complete stages kept.

    A run stopped in its first stage has no summary yet; without one, ``--resume`` would
    refuse the directory although the stage's checkpoints are in its storage.
    """
    from rayeffi.driver.run import SUMMARY_FILE, write_summary
    from rayeffi.driver.storage import resolve_storage

    if not out.is_dir():
        return
    path = out / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        summary = None
    if not isinstance(summary, dict):
        summary = {"recipe": recipe.model_dump(mode="json"), "storage": resolve_storage(storage, out), "stages": []}
    summary["status"] = "interrupted"
    write_summary(summary, out)


def _resume_command(args, out: Path) -> str:
    words = [args.recipe, *(f"--set {shlex.quote(o)}" for o in args.overrides)]
    words += ["--smoke"] * args.smoke + [f"--address {args.address}"] * bool(args.address)
    words += [f"--storage {args.storage}"] * bool(args.storage)
    return " ".join([*words, f"--out {shlex.quote(str(out))}", "--resume"])


def check_out_dir(out: Path) -> None:
    """``--out`` must be a directory that exists or can be made, and that this user can write to."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file, not a directory: give a directory for the run")
    parent = out
    while not parent.exists():  # the nearest part of the path that exists
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out} lies below {parent}, which is a file, not a directory: give another --out")
    try:  # a real write, not os.access: root passes os.access on read-only filesystems
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".rayeffi-write-check-"))
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write in {parent} ({exc.strerror or exc}): give a directory you "
                        "can write to") from None


def _report(args) -> int:
    from rayeffi.report import write_report

    for path in write_report(args.run_dir):
        print(path)
    return 0


def _export(args) -> int:
    from rayeffi.techniques.dsd.export import export_stage

    result = export_stage(args.run_dir, args.stage, args.format, args.out)
    print(f"wrote {result['path']} ({result['format']}, sparse phase of round {result['round']}, "
          f"target sparsity {result['target_sparsity']:.2f})")
    for name, sparsity in result["layer_sparsity"].items():
        print(f"  {name}: sparsity {sparsity:.4f}")
    print(f"size {result['bytes']:,} bytes against {result['dense_bytes']:,} dense "
          f"({result['bytes'] / result['dense_bytes']:.3f}x); loads back to identical weights: verified")
    return 0


def _bench(args) -> int:
    """One benchmark under an overall deadline: past it, a one-line message and exit 1, no hang."""
    import signal

    from rayeffi.bench import benchmark
    from rayeffi.bench.ranks import BenchTimeout

    def expire(signum, frame):
        raise BenchTimeout(f"rayeffi bench {args.name} did not finish in {args.timeout:.0f} s (--timeout)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(int(args.timeout))
    try:
        print(f"rayeffi bench {args.name}{' --quick' if args.quick else ''}: deadline {args.timeout:.0f} s", flush=True)
        benchmark(args.name)(args)
        return 0
    except BenchTimeout as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        import ray

        if ray.is_initialized():  # a bench that started a private Ray stops it, whatever happened
            ray.shutdown()


def _submit(args) -> int:
    from rayeffi.submit import submit

    return submit(args)


def _init(args) -> int:
    from rayeffi.starter import write_starter

    paths = write_starter(args.folder)
    for path in paths:
        print(path)
    print(f"next: rayeffi run {paths[0]} --smoke")
    return 0


def _evaluate(args) -> int:
    from rayeffi.evaluate import describe, evaluate_run

    print(describe(evaluate_run(args.run_dir, args.data, args.stage)))
    return 0


def _schema(args) -> int:
    from rayeffi.starter import recipe_schema

    print(recipe_schema())
    return 0


COMMANDS = {"init": _init, "schema": _schema, "evaluate": _evaluate, "run": _run, "validate": _validate, "report": _report, "export": _export, "bench": _bench, "submit": _submit}


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
