"""Command line: ``cissl train | predict | evaluate | estimate-distribution | split | data | bench | sweep | report |
plot | list`` (README, "Runs", gives each one's synopsis).

Errors caused by input (config, data, checkpoints) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cissl.engine.stop import TrainingStopped
from cissl.errors import CisslError, PrintedByAnotherRank
from cissl.rundir import RunDir
from cissl.wording import counted


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file (see configs/)")
    parser.add_argument("--algorithm", help="run this algorithm instead of the config's (its defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. optim.lr=0.01 train.iterations=1000")


def _load(args):
    from cissl.config import load_config
    from cissl.engine.launch import met_by_every_local_rank

    with met_by_every_local_rank():  # under torchrun, printed once per node
        return load_config(args.config, args.overrides, args.algorithm)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def print_results(results: dict, run_dir: Path, stream=None) -> None:
    stream = stream or sys.stdout
    rows = [
        ("top-1", _pct(results["top1"])),
        ("balanced accuracy", _pct(results["balanced_accuracy"])),
        ("many / medium / few", " / ".join(_pct(results[f"{g}_accuracy"]) for g in ("many", "medium", "few"))),
        ("geometric mean recall", _pct(results["geometric_mean"])),
        (f"median of last {results['last_k']} top-1", _pct(results["median_last_top1"])),
        (f"mean of last {results['last_k']} top-1", _pct(results["mean_last_top1"])),
    ]
    for head, metrics in results["heads"].items():
        if head != results["reported_head"]:
            rows.append((f"head '{head}' top-1 / balanced", f"{_pct(metrics['top1'])} / "
                                                           f"{_pct(metrics['balanced_accuracy'])}"))
    print(f"\n{results['algorithm']} on {results['setting'] or 'the configured data'} "
          f"(EMA model, head '{results['reported_head']}', test set, after {results['iterations']} iterations)",
          file=stream)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}", file=stream)
    print(f"results: {RunDir(run_dir).results}", file=stream)


def _reports() -> bool:
    """Whether this process prints a command's result: the only one, or rank 0 under torchrun."""
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args) -> int:
    from cissl.api import resume, train
    from cissl.engine.launch import met_by_every_local_rank
    from cissl.engine.run import default_run_dir

    with met_by_every_local_rank():  # the same on every process of a node: printed once per node
        if args.resume and (args.config or args.overrides or args.algorithm):
            raise CisslError("--resume continues a run with its saved config.yaml; "
                             "drop --config / --algorithm / overrides")
        if not args.resume and not args.config:
            raise CisslError("train needs --config FILE (or --resume RUN_DIR)")
    if args.resume:
        run_dir = Path(args.resume)
        results = resume(run_dir, quiet=args.quiet)
    else:
        config = _load(args)
        run_dir = Path(args.out) if args.out else default_run_dir(config)
        results = train(config, run_dir, quiet=args.quiet)
    if _reports():
        print_results(results, run_dir)
    return 0


def cmd_estimate_distribution(args) -> int:
    from cissl.api import estimate_distribution

    result = estimate_distribution(args.run_dir, args.checkpoint, args.max_condition, args.all_checkpoints)
    print(f"estimated class counts of the {result['pool_size']} unlabeled images ({result['head']} head), "
          f"condition number limit {result['max_condition']:g}:")
    for estimate in result["estimates"]:
        verdict = ("accepted" if estimate["accepted"]
                   else "rejected (a negative count or an ill-conditioned confusion matrix)")
        counts = ", ".join(f"{c:.1f}" for c in estimate["counts"])
        print(f"  {Path(estimate['checkpoint']).name}: [{counts}], condition number "
              f"{estimate['condition_number']:.1f}: {verdict}")
    if not result["accepted"]:
        print("no estimate accepted")
        return 1
    if result["accepted_estimates"] > 1:
        counts = ", ".join(f"{c:.1f}" for c in result["counts"])
        print(f"mean of the {result['accepted_estimates']} accepted estimates: [{counts}]")
    weights = ",".join(f"{max(c, 0.0):.4g}" for c in result["counts"])
    print(f"DARP toward it: algorithm.refiner.target=given algorithm.refiner.target_distribution=[{weights}]")
    return 0


def cmd_evaluate(args) -> int:
    from cissl.api import evaluate

    run_dir = Path(args.run_dir)
    results = evaluate(run_dir, args.checkpoint)
    if _reports():
        print_results(results, run_dir)
    return 0


def cmd_predict(args) -> int:
    import csv
    import io

    from cissl.api import load_run
    from cissl.rundir import atomic_write_text

    if args.top_k < 1:
        raise CisslError(f"--top-k must be at least 1, got {args.top_k}")
    run = load_run(args.run_dir, args.checkpoint)
    files, predictions = run.predict_files(args.images, sys.stderr)
    values, indices = predictions.top_k(args.top_k)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", *[f"{kind}{r}" for r in range(1, values.shape[1] + 1) for kind in ("class", "prob")]])
    for path, probs, classes in zip(files, values.tolist(), indices.tolist()):
        cells = [c for cls, p in zip(classes, probs) for c in (run.class_names[cls], f"{p:.6f}")]
        writer.writerow([str(path), *cells])
    if args.out:
        atomic_write_text(Path(args.out), table.getvalue())
        counts = predictions.labels.bincount(minlength=len(run.class_names)).tolist()
        summary = ", ".join(f"{name} {n}" for name, n in zip(run.class_names, counts) if n)
        print(f"{counted(len(files), 'image')} ({run.head} head of {run.checkpoint.name}): {summary}")
        print(f"predictions: {args.out}")
    else:
        sys.stdout.write(table.getvalue())
    return 0


def cmd_split(args) -> int:
    from cissl.api import split, split_counts

    config = _load(args)
    print(json.dumps(split_counts(config) if args.counts_only else split(config, args.save)))
    return 0


def cmd_list(args) -> int:
    from cissl.api import config_keys, registered

    own = config_keys(args.algorithm, args.plugins) if args.algorithm else None  # an unknown name: before any list
    titles = {"algorithms": "algorithms", "refiners": "pseudo-label refiners (algorithm.refiner)",
              "aux_heads": "auxiliary heads (algorithm.aux_head)", "backbones": "backbones (model.name)",
              "datasets": "data sets (data.dataset)"}
    for kind, entries in registered(args.plugins).items():
        print(f"{titles[kind]}:")
        width = max(map(len, entries))
        for name, summary in entries.items():
            print(f"  {name:<{width}}  {summary}")
    print("\nconfig keys (key, default, meaning):")
    for key, default, text in config_keys():
        print(f"  {key:<38} {default:<16} {text}")
    if own is not None:
        print(f"\nalgorithm.* keys of {args.algorithm}:")
        for key, default, text in own:
            print(f"  {key:<38} {default:<16} {text}")
    return 0


def cmd_bench_throughput(args) -> int:
    from cissl.api import throughput
    from cissl.bench.throughput import format_table

    config = _load(args)
    if args.device:
        config = config.replace({"train.device": args.device})
    # under torchrun: the step of one DDP rank (the floor stays a bare network)
    result = throughput(config, steps=args.steps, warmup=args.warmup, rounds=args.rounds, synthetic=args.synthetic)
    if _reports():
        print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_sweep(args) -> int:
    from cissl.api import sweep
    from cissl.evaluation.report import to_markdown

    rows = sweep(args.configs, args.out, args.algorithms, args.seeds, args.overrides, grid=args.grid,
                 jobs_file=args.jobs, workers=args.workers, deadline=args.deadline, by_seed=args.by_seed,
                 quiet=not args.verbose)
    print(to_markdown(rows))
    print(f"tables: {Path(args.out) / 'results.md'}, {Path(args.out) / 'results.csv'}")
    return 0


def cmd_report(args) -> int:
    from cissl.api import report, report_pages
    from cissl.evaluation.per_seed import PER_SEED
    from cissl.evaluation.report import PAIRED, to_markdown

    if args.out and args.per_seed:
        raise CisslError("--per-seed writes DIR/per_seed.md of one folder: leave out --out")
    if args.out:
        written = report_pages(args.roots, args.out, tsne=args.tsne)
        print(f"{written[0]}\n{written[1]}\n{counted(len(written) - 2, 'figure')} in {Path(args.out) / 'figures'}")
        return 0
    if len(args.roots) > 1 or args.tsne:
        raise CisslError("several folders or --tsne: give --out OUT for report.md / report.html")
    root = Path(args.roots[0])
    rows = report(root, args.pair, args.per_seed)
    print(to_markdown(rows))
    for name, wanted in ((PAIRED, args.pair), (PER_SEED, args.per_seed)):
        if wanted:
            print((root / name).read_text(encoding="utf-8"))
    return 0


def cmd_plot(args) -> int:
    from cissl.api import plot

    for path in plot(args.run_dir, args.out):
        print(path)
    return 0


def cmd_data_build_imagenet127(args) -> int:
    from cissl.api import build_imagenet127

    build_imagenet127(args.source, args.size, args.out, partial=args.partial)
    return 0


class _PrintVersion(argparse.Action):
    """``--version``: the release and, in a git checkout, the commit that last changed the package (what a
    run's ``environments`` record as its code); worked out only when asked (it runs git)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from cissl import __version__
        from cissl.environment import source_commit

        commit = source_commit()
        print(f"cissl {__version__}" + (f" (code {commit})" if commit else ""))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cissl", description="Class-imbalanced semi-supervised learning")
    parser.add_argument("--version", action=_PrintVersion, help="print the version (and the checkout's code) and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a run (or resume one)")
    _add_config_args(train, required=False)
    train.add_argument("--out", help="run directory (default runs/<setting>-<algorithm>-seed<k>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(func=cmd_train)

    predict = sub.add_parser("predict", help="class predictions of a trained run for image files")
    predict.add_argument("run_dir")
    predict.add_argument("--images", required=True, help="an image file or a folder of them (PNG, JPEG, ...)")
    predict.add_argument("--out", help="CSV file to write (default: print the CSV)")
    predict.add_argument("--top-k", type=int, default=3, help="classes per image, most probable first (default 3)")
    predict.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("evaluate", help="recompute results.json of a run from a checkpoint")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")
    evaluate.set_defaults(func=cmd_evaluate)

    estimate = sub.add_parser("estimate-distribution",
                              help="estimate the unlabeled pool's class distribution with a run's model (BBSE)")
    estimate.add_argument("run_dir", help="a run with data.val_per_class >= 1 (e.g. a supervised run)")
    estimate.add_argument("--checkpoint", action="append",
                          help="checkpoint file (default: the run's newest); repeat it to average the accepted "
                               "estimates of several, as the DASO framework does over a run's evaluations")
    estimate.add_argument("--all-checkpoints", action="store_true",
                          help="one estimate from each checkpoint the run keeps (train.keep_checkpoints), averaged")
    estimate.add_argument("--max-condition", type=float, default=100.0,
                          help="largest condition number of the confusion matrix accepted (DASO's: 100)")
    estimate.set_defaults(func=cmd_estimate_distribution)

    split = sub.add_parser("split", help="print the per-class labeled / unlabeled counts of a setting")
    _add_config_args(split)
    split.add_argument("--counts-only", action="store_true", help="counts from the protocol, no data read")
    split.add_argument("--save", metavar="FILE", help="also write the split (indices) to FILE")
    split.set_defaults(func=cmd_split)

    data = sub.add_parser("data", help="prepare data sets")
    data_sub = data.add_subparsers(dest="data", required=True)
    imagenet = data_sub.add_parser("build-imagenet127", help="Small-ImageNet-127 from the downsampled ImageNet "
                                                             "pickles (Imagenet32 / Imagenet64)")
    imagenet.add_argument("--source", required=True, help="folder with train_data_batch_1..10 and val_data")
    imagenet.add_argument("--size", type=int, required=True, choices=(32, 64), help="image size of the source")
    imagenet.add_argument("--out", required=True, help="folder to write (then data.root of the imagenet127 configs)")
    imagenet.add_argument("--partial", action="store_true",
                          help="build even if the source lacks images of ILSVRC-2012 (a partial download)")
    imagenet.set_defaults(func=cmd_data_build_imagenet127)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    throughput = bench_sub.add_parser("throughput", help="time a training step against its floor")
    _add_config_args(throughput)
    throughput.add_argument("--steps", type=int, default=9, help="timed steps of each kind (default 9)")
    throughput.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    throughput.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    throughput.add_argument("--device", choices=("cpu", "cuda"), help="override train.device")
    throughput.add_argument("--synthetic", action="store_true",
                            help="random images of the data set's shape (no data files needed)")
    throughput.add_argument("--json", action="store_true", help="print one JSON object")
    throughput.set_defaults(func=cmd_bench_throughput)

    sweep = sub.add_parser("sweep", help="run settings x algorithms x seeds and tabulate mean +- std")
    sweep.add_argument("--configs", nargs="+", help="config files (settings)")
    sweep.add_argument("--algorithms", nargs="+", help="algorithms (default: each config's own)")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0], help="run seeds (default 0)")
    sweep.add_argument("--grid", nargs="+", metavar="key=v1,v2", help="candidate values: every combination runs")
    sweep.add_argument("--jobs", type=Path, help="also run the jobs of a file: 'name config algorithm [key=value ...]'"
                                                 " per line, in OUT/name")
    sweep.add_argument("--workers", type=int, default=1, help="runs side by side, each in its own process (default 1)")
    sweep.add_argument("--deadline", type=float, help="seconds: stop the running jobs then (a later sweep resumes)")
    sweep.add_argument("--by-seed", action="store_true",
                       help="run every config's and algorithm's seed-0 job first, then seed 1's, ... (default: "
                            "config by config): a sweep stopped early then holds whole seeds, the pairs")
    sweep.add_argument("--out", required=True, help="root folder of the runs and tables")
    sweep.add_argument("--verbose", action="store_true", help="progress lines of every run")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    sweep.set_defaults(func=cmd_sweep)

    report = sub.add_parser("report", help="tabulate every results.json below folders (--out: report.md / .html)")
    report.add_argument("roots", nargs="+", metavar="DIR", help="folders holding runs (results.json below them)")
    report.add_argument("--out", help="write report.md, report.html and figures/ here (the paper's numbers beside "
                                      "ours)")
    report.add_argument("--tsne", action="store_true", help="with --out: a t-SNE of each method's test features")
    report.add_argument("--pair", metavar="ALGORITHM",
                        help="also write paired.md: ALGORITHM minus every other of its setting, paired by seed "
                             "(e.g. semi); SETTING:ALGORITHM pairs that row with every row of every setting "
                             "(settings sharing its split, e.g. Table-5 ablations)")
    report.add_argument("--per-seed", action="store_true",
                        help="also write per_seed.md: each row's balanced accuracy by seed and, with --pair, "
                             "ALGORITHM minus each row by seed, overall and for the many / medium / few thirds")
    report.set_defaults(func=cmd_report)

    plot = sub.add_parser("plot", help="figures of a run (needs the plots extra)")
    plot.add_argument("run_dir")
    plot.add_argument("--out", help="folder for the PNG files (default RUN_DIR/plots)")
    plot.set_defaults(func=cmd_plot)

    lister = sub.add_parser("list", help="list algorithms and config keys")
    lister.add_argument("--algorithm", help="also list this algorithm's keys")
    lister.add_argument("--plugins", nargs="+", metavar="FILE_OR_MODULE",
                        help="also list what these modules register (the config key plugins)")
    lister.set_defaults(func=cmd_list)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as ``main`` runs it; argparse's usage error (SystemExit 2) for what it cannot take."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after an option flag belong with the others, in command-line order
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """The command's exit status; an error or a stop becomes one line on stderr."""
    args = parse_args(argv)
    try:
        return args.func(args)
    except PrintedByAnotherRank:  # a DDP rank's copy of an error another rank prints
        from cissl.engine.launch import wait_for_the_printing_rank

        wait_for_the_printing_rank()
        return 2
    except CisslError as exc:
        print(f"cissl: error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        if exc.printed_by_this_rank:  # under torchrun, rank 0's line alone
            print(f"cissl: {exc}", file=sys.stderr)
        return 128 + exc.signal_number
    except KeyboardInterrupt:
        print("cissl: interrupted; a run continues from its last checkpoint with "
              "`cissl train --resume RUN_DIR`", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of the output went away (`cissl list | head`): stop without a word
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor a second error as Python exits
        return 128 + 13  # as a process ended by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
