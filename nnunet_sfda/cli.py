"""``nnunet-sfda``: argument parsing only; each subcommand calls one library function."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _prepare_target(args: argparse.Namespace) -> None:
    from nnunet_sfda.target import prepare_target

    prepared = prepare_target(args.m, args.d, args.c, fold=args.f, checkpoint_name=args.chk,
                              num_processes=args.np, overwrite=args.overwrite, prior_file=args.prior)
    src = prepared.source
    for message in prepared.warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(f"Prepared {prepared.data_folder} ({src.num_cases} cases, "
          f"{'with' if src.has_monitoring_labels else 'without'} monitoring labels)")
    print(f"Adaptation starts from {src.checkpoint}")
    if prepared.prior_file is None:
        print(f"Next: nnunet-sfda estimate-prior -d {args.d} ...   (no prior installed yet)")
    else:
        print(f"Prior: {prepared.prior_file}")
    print(f"Then:  nnUNetv2_train {args.d} {args.c} all -tr nnUNetTrainerSFDA"
          + ("" if src.plans_identifier == "nnUNetPlans" else f" -p {src.plans_identifier}"))


def _structure_mapping(items: list[str] | None) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items or []:
        label, sep, structure = item.partition("=")
        if not sep or not label or not structure:
            raise ValueError(f"--structure {item!r}: expected LABEL=STRUCTURE, e.g. organ=prostate")
        if label in mapping:
            raise ValueError(f"--structure: label {label!r} is mapped twice")
        mapping[label] = structure
    return mapping


def _list_tables() -> None:
    from nnunet_sfda.priors.anatomy import builtin_table_ids, load_table

    for table_id in builtin_table_ids():
        table = load_table(table_id)
        print(f"{table_id}:")
        for structure in table.structures:
            default = table.default_population(structure)
            pops = ", ".join(p + (" (default)" if p == default else "") for p in table.populations(structure))
            row = table.row(structure).volume_ml()
            print(f"  {structure:<34} {row.mean_ml:9.4g} mL  [{row.low_ml:.4g}, {row.high_ml:.4g}]  {pops}")


def _estimate_prior(args: argparse.Namespace) -> None:
    from nnunet_sfda.priors import format_prior_table
    from nnunet_sfda.target_prior import estimate_prior, set_option_flags

    options = {"ratios": args.ratios, "anatomy": args.anatomy, "structures": _structure_mapping(args.structure),
               "population": args.population, "labels": args.labels, "true_size": args.true_size,
               "pixels": args.pixels, "tags": args.tags, "slice_model": args.slice_model,
               "volume_scale": args.volume_scale, "install": args.install, "output": args.o}
    if args.list_tables:
        others = set_option_flags(options) + (["-d"] if args.d else [])
        if others:
            raise ValueError(f"--list-tables lists the built-in tables and exits; it takes no {', '.join(others)}")
        _list_tables()
        return
    if args.d is None:
        raise ValueError("give the target dataset with -d (or --list-tables)")
    result = estimate_prior(args.d, **options, overwrite=args.overwrite)
    if args.install is None:
        print(format_prior_table(result.prior))
    for message in result.warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(f"Installed {args.install} as {result.path}" if args.install is not None else f"Wrote {result.path}")


def _label_stats(args: argparse.Namespace) -> None:
    from nnunet_sfda.target_prior import write_label_statistics_table

    stats, path = write_label_statistics_table(args.folder, args.dataset_json, args.o, overwrite=args.overwrite)
    for name, entry in stats.summary()["labels"].items():
        v = entry["volume_ml"]
        print(f"{name}: volume {v['mean']:.4g} ± {v['sd']:.3g} mL (range {v['min']:.4g}-{v['max']:.4g}), "
              f"present in {entry['slice_presence']:.0%} of slices")
    print(f"Wrote {path} ({stats.num_images} label maps); use it with estimate-prior --anatomy {path}")


def _report(args: argparse.Namespace) -> None:
    from nnunet_sfda.qc.report import make_report

    result = make_report(args.d, args.c, args.tr, plans=args.p, images=args.i, labels=args.labels, output=args.o,
                         device=args.device, overwrite=args.overwrite, checkpoint=args.chk)
    counts = ", ".join(f"{r} {n}" for r, n in result.report.counts().items())
    print(f"Wrote {result.folder} ({len(result.report.cases)} cases: {counts}); see sfda_report.md there")


def _demo(args: argparse.Namespace) -> None:
    from nnunet_sfda.benchmark.demo import run_demo

    run_demo(Path(args.o), overwrite=args.overwrite, device=args.device, seed=args.seed)


def _benchmark(args: argparse.Namespace) -> None:
    from nnunet_sfda.benchmark.runner import result_summary, run_benchmark

    results = run_benchmark(args.o, preset=args.preset, methods=args.methods, shifts=args.shifts, device=args.device,
                            resume=args.resume, overwrite=args.overwrite, seed=args.seed, peers=args.peers,
                            dgtta_python=args.dgtta_python, every_epoch=args.every_epoch)
    print(result_summary(results))


def _convert(args: argparse.Namespace) -> None:
    from nnunet_sfda.datasets.registry import CONVERTERS

    pair = CONVERTERS[args.task].convert(args)
    print(f"source: {pair.source} ({pair.num_source} labelled cases)")
    print(f"target: {pair.target} ({pair.num_target} cases, no labels)")
    print(f"target labels for evaluation only: {pair.target_labels}")
    print(f"Next: see docs/recipes/{args.task}.md")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnunet-sfda", description="Source-free domain adaptation for nnU-Net v2")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-target", help="preprocess unlabelled target images with the source model's plans")
    p.add_argument("-m", required=True, help="source model: trained-model folder (Trainer__Plans__config) or "
                                             "the zip made by nnUNetv2_export_model_to_zip")
    p.add_argument("-d", required=True, help="target dataset id or name (in nnUNet_raw, imagesTr only)")
    p.add_argument("-c", required=True, help="configuration of the source model, e.g. 2d or 3d_fullres")
    p.add_argument("-f", default=None, help="source fold to start from (default: all where present, else 0)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="source checkpoint file name")
    p.add_argument("-np", type=int, default=None, help="processes for preprocessing (default: nnUNet_def_n_proc)")
    p.add_argument("--prior", default=None, help="prior file to install as the dataset's sfda_prior.json")
    p.add_argument("--overwrite", action="store_true", help="replace this configuration's preprocessed data")
    p.set_defaults(func=_prepare_target)

    p = sub.add_parser("estimate-prior", help="write the class-ratio prior the trainer reads",
                       description="Write the class-ratio prior of a prepared target dataset. Give one source: "
                                   "--anatomy (table volumes), --labels (label statistics, or --true-size), "
                                   "--pixels (sizes per slice), --ratios (constants) or --install (a prior file).")
    p.add_argument("-d", default=None, help="target dataset id or name (prepared with prepare-target)")
    p.add_argument("--list-tables", action="store_true", help="list the built-in anatomy tables and exit")
    p.add_argument("--anatomy", default=None, metavar="TABLE", help="built-in table id or a CSV file")
    p.add_argument("--structure", nargs="+", metavar="LABEL=STRUCTURE",
                   help="map each foreground label to a table structure, e.g. organ=prostate")
    p.add_argument("--population", default=None, help="table rows to use (default: each structure's default row)")
    p.add_argument("--labels", default=None, metavar="FOLDER",
                   help="label maps: their structure volumes are applied to each target image (e.g. the source's "
                        "labelsTr); with --true-size, the target's own labels (analysis only)")
    p.add_argument("--true-size", action="store_true",
                   help="with --labels: measure the target's own labels into sfda_prior_true_size.json")
    p.add_argument("--pixels", default=None, metavar="CSV", help="structure sizes in pixels per slice "
                                                                  "(columns case,slice,label,pixels)")
    p.add_argument("--ratios", type=float, nargs="+", help="constant ratios, one per label in dataset.json order")
    p.add_argument("--tags", default=None, metavar="CSV",
                   help="where each structure is present (columns case,label,slices; slices along raw axis 0)")
    p.add_argument("--slice-model", choices=["none", "ellipsoid"], default=None,
                   help="with --anatomy or --labels: per-slice ratios for untagged cases: none (default: per-case "
                        "only) or a centred ellipsoid profile")
    p.add_argument("--volume-scale", type=float, default=None,
                   help="with --anatomy or --labels: multiply every structure volume (sensitivity studies; "
                        "default 1)")
    p.add_argument("--install", default=None, metavar="FILE",
                   help="install an existing prior file as the dataset's prior (checked against its cases)")
    p.add_argument("-o", default=None, help="write here instead of <nnUNet_preprocessed>/DatasetXXX/sfda_prior.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prior file")
    p.set_defaults(func=_estimate_prior)

    p = sub.add_parser("label-stats", help="structure volumes of a folder of label maps, as an anatomy table CSV")
    p.add_argument("folder", help="folder of label maps (e.g. the source dataset's labelsTr)")
    p.add_argument("--dataset-json", required=True, help="dataset.json naming the labels and the file ending")
    p.add_argument("-o", required=True, help="CSV file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_label_stats)

    p = sub.add_parser("report", help="per-case QC of an adapted target: source vs adapted, flags, a recommendation",
                       description="Predict each scan with the source and the adapted model and write, per case, "
                                   "volumes against their plausible range, source/adapted agreement, a flip "
                                   "consistency score, flags and a recommendation (adapted, source or review); "
                                   "no labels needed. See docs/report.md.")
    p.add_argument("-d", required=True, help="target dataset id or name (prepared with prepare-target)")
    p.add_argument("-c", required=True, help="configuration, e.g. 2d or 3d_fullres")
    p.add_argument("-tr", required=True, help="trainer of the adapted model, e.g. nnUNetTrainerSFDA")
    p.add_argument("-p", default=None, help="plans of the adapted model (default: the prepared target's)")
    p.add_argument("-i", default=None, metavar="IMAGES",
                   help="folder of scans CASE_XXXX.ending to report on (default: the prepared cases in imagesTr)")
    p.add_argument("--labels", default=None, metavar="LABELS",
                   help="folder of label maps CASE.ending: adds each model's Dice (to check the flags)")
    p.add_argument("-o", default=None, help="output folder (default: a new ./sfda_report_<d>_<tr>)")
    p.add_argument("-chk", default="checkpoint_final.pth",
                   help="adapted checkpoint in fold_all (default: the label-free choice; checkpoint_last.pth: the "
                        "last epoch)")
    p.add_argument("-device", default="cpu", help="cpu or cuda")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier report in -o (never a folder the report did not make)")
    p.set_defaults(func=_report)

    p = sub.add_parser("demo", help="generate a source and a shifted target, train, adapt, compare Dice")
    p.add_argument("-o", default="sfda_demo", help="working folder (all nnU-Net folders live inside it)")
    p.add_argument("-device", default="cpu", help="cpu or cuda")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo's working folder (never a folder the demo did not make)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data and of every training run")
    p.set_defaults(func=_demo)

    p = sub.add_parser("benchmark", help="generated domain shifts: source-only, baselines, AdaMI and oracle compared",
                       description="Generate a labelled source and shifted targets, run every method through the "
                                   "stock nnU-Net commands, and write results.json/.md/.csv and figures into -o DIR.")
    p.add_argument("-o", required=True, help="output folder (all nnU-Net folders live inside it)")
    from nnunet_sfda.benchmark.presets import PRESETS

    p.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="; ".join(f"{preset.name}: {preset.note}" for preset in PRESETS.values()))
    from nnunet_sfda.benchmark.methods import DEFAULT_METHODS, METHODS, PEERS

    ours = ", ".join(m for m in METHODS if m not in PEERS)
    p.add_argument("--methods", default=None,
                   help=f"all, or comma-separated (default: {','.join(DEFAULT_METHODS)}): {ours}")
    p.add_argument("--shifts", default=None, help="default, all, or comma-separated shift families")
    p.add_argument("--peers", default=None, help=f"other projects' methods to add: {', '.join(PEERS)} (3d presets)")
    p.add_argument("--dgtta-python", default=".venv-dgtta/bin/python", metavar="PYTHON",
                   help="the Python of DG-TTA's environment (made by scripts/setup_dgtta.sh)")
    p.add_argument("-device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of every training run")
    p.add_argument("--every-epoch", action="store_true",
                   help="keep every candidate of each adaptation run's label-free choice and write their test Dice "
                        "(runs/SHIFT/METHOD/candidate_dice.json, for scripts/evaluate_choice.py)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in -o")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier benchmark run in -o (never a folder the benchmark did not make)")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("convert", help="convert a public dataset of the AdaMI paper into source + target datasets")
    tasks = p.add_subparsers(dest="task", required=True)
    from nnunet_sfda.datasets.registry import CONVERTERS

    for task, converter in CONVERTERS.items():
        t = tasks.add_parser(task, help=converter.summary, description=converter.description)
        converter.add_arguments(t)
        t.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError, RuntimeError) as e:  # our errors name the file and the mismatch; OSError its path
        print(f"nnunet-sfda {args.command}: error: {_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # each command leaves its earlier complete state (prepare-target: see target.py)
        print(f"nnunet-sfda {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _error_message(error: Exception) -> str:
    """One line naming what went wrong; an OSError (permission denied, a folder where a file belongs, ...) as
    'PATH: reason' instead of Python's '[Errno 13] ...'."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        paths = f"{error.filename} -> {error.filename2}" if error.filename2 is not None else f"{error.filename}"
        return f"{paths}: {error.strerror.lower()}"
    return str(error) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
