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
    from nnunet_sfda import estimate
    from nnunet_sfda.priors import format_prior_table

    if args.list_tables:
        _list_tables()
        return
    if args.d is None:
        raise ValueError("give the target dataset with -d (or --list-tables)")
    if args.install is not None:
        path = estimate.install_prior(args.d, args.install, overwrite=args.overwrite)
        print(f"Installed {args.install} as {path}")
        return
    sources = [name for name in ("ratios", "anatomy", "labels", "pixels") if getattr(args, name) is not None]
    if len(sources) != 1:
        raise ValueError("give exactly one of --anatomy TABLE, --labels FOLDER, --pixels CSV, --ratios r0 r1 ... "
                         "or --install FILE" + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
    if args.structure and args.anatomy is None:
        raise ValueError("--structure maps labels to the rows of an anatomy table; it needs --anatomy")
    if args.true_size and args.labels is None:
        raise ValueError("--true-size measures target label maps; it needs --labels FOLDER")
    common = {"output": args.o, "overwrite": args.overwrite}
    shaping = {"tags_file": args.tags, "slice_model": args.slice_model, "scale": args.volume_scale}
    if args.anatomy is not None:
        result = estimate.estimate_anatomy_prior(args.d, args.anatomy, _structure_mapping(args.structure),
                                                 population=args.population, **shaping, **common)
    elif args.labels is not None and args.true_size:
        result = estimate.estimate_true_size_prior(args.d, args.labels, **common)
    elif args.labels is not None:
        result = estimate.estimate_label_statistics_prior(args.d, args.labels, **shaping, **common)
    elif args.pixels is not None:
        result = estimate.estimate_pixel_prior(args.d, args.pixels, **common)
    else:
        result = estimate.estimate_constant_prior(args.d, args.ratios, **common)
    print(format_prior_table(result.prior))
    for message in result.warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(f"Wrote {result.path}")


def _label_stats(args: argparse.Namespace) -> None:
    from nnunet_sfda.estimate import write_label_statistics_table

    stats, path = write_label_statistics_table(args.folder, args.dataset_json, args.o, overwrite=args.overwrite)
    for name, entry in stats.summary()["labels"].items():
        v = entry["volume_ml"]
        print(f"{name}: volume {v['mean']:.4g} ± {v['sd']:.3g} mL (range {v['min']:.4g}-{v['max']:.4g}), "
              f"present in {entry['slice_presence']:.0%} of slices")
    print(f"Wrote {path} ({stats.num_images} label maps); use it with estimate-prior --anatomy {path}")


def _demo(args: argparse.Namespace) -> None:
    from nnunet_sfda.benchmark.demo import run_demo

    run_demo(Path(args.o), overwrite=args.overwrite, device=args.device)


def _benchmark(args: argparse.Namespace) -> None:
    from nnunet_sfda.benchmark.runner import result_summary, run_benchmark

    results = run_benchmark(args.o, preset=args.preset, methods=args.methods, shifts=args.shifts, device=args.device,
                            resume=args.resume, overwrite=args.overwrite, seed=args.seed)
    print(result_summary(results))


CONVERTERS = ("prostate", "heart", "spine")


def _convert(args: argparse.Namespace) -> None:
    import importlib

    module = importlib.import_module(f"nnunet_sfda.datasets.{args.task}")
    options = {k: v for k, v in vars(args).items()
               if k not in ("func", "command", "task", "src_dir", "source_id", "target_id")}
    source_id = args.source_id if args.source_id is not None else module.DEFAULT_SOURCE_ID
    target_id = args.target_id if args.target_id is not None else module.DEFAULT_TARGET_ID
    pair = module.convert(Path(args.src_dir), source_id=source_id, target_id=target_id, **options)
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
    p.add_argument("--slice-model", choices=["none", "ellipsoid"], default="none",
                   help="per-slice ratios for untagged cases: none (per-case only) or a centred ellipsoid profile")
    p.add_argument("--volume-scale", type=float, default=1.0,
                   help="multiply every structure volume (sensitivity studies; default 1)")
    p.add_argument("--install", default=None, help="install an existing prior file as the dataset's prior")
    p.add_argument("-o", default=None, help="write here instead of <nnUNet_preprocessed>/DatasetXXX/sfda_prior.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prior file")
    p.set_defaults(func=_estimate_prior)

    p = sub.add_parser("label-stats", help="structure volumes of a folder of label maps, as an anatomy table CSV")
    p.add_argument("folder", help="folder of label maps (e.g. the source dataset's labelsTr)")
    p.add_argument("--dataset-json", required=True, help="dataset.json naming the labels and the file ending")
    p.add_argument("-o", required=True, help="CSV file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_label_stats)

    p = sub.add_parser("demo", help="generate a source and a shifted target, train, adapt, compare Dice")
    p.add_argument("-o", default="sfda_demo", help="working folder (all nnU-Net folders live inside it)")
    p.add_argument("-device", default="cpu", help="cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="delete an existing working folder first")
    p.set_defaults(func=_demo)

    p = sub.add_parser("benchmark", help="generated domain shifts: source-only, baselines, AdaMI and oracle compared",
                       description="Generate a labelled source and shifted targets, run every method through the "
                                   "stock nnU-Net commands, and write results.json/.md/.csv and figures into -o DIR.")
    p.add_argument("-o", required=True, help="output folder (all nnU-Net folders live inside it)")
    p.add_argument("--preset", default="quick", choices=["micro", "quick", "full"],
                   help="quick: the default shift in 2d on a CPU (about 17 min on 2 idle cores); full: bigger data for one GPU; "
                        "micro: a smoke test")
    p.add_argument("--methods", default=None, help="comma-separated subset (default: all): source_only, entropy_only, "
                                                   "tent, adami, adami_per_sample, adami_batch_marginal, "
                                                   "adami_true_size, oracle")
    p.add_argument("--shifts", default=None, help="default, all, or comma-separated shift families")
    p.add_argument("-device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of every training run")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in -o")
    p.add_argument("--overwrite", action="store_true", help="delete -o first")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("convert", help="convert a public dataset of the AdaMI paper into source + target datasets")
    tasks = p.add_subparsers(dest="task", required=True)
    for task in CONVERTERS:
        import importlib

        module = importlib.import_module(f"nnunet_sfda.datasets.{task}")
        t = tasks.add_parser(task, help=(module.__doc__ or task).strip().splitlines()[0],
                             description=(module.__doc__ or "").strip())
        t.add_argument("src_dir", help="the downloaded dataset folder (layout: docs/recipes/%s.md)" % task)
        t.add_argument("--source-id", type=int, default=None,
                       help=f"source dataset id (default {module.DEFAULT_SOURCE_ID})")
        t.add_argument("--target-id", type=int, default=None,
                       help=f"target dataset id (default {module.DEFAULT_TARGET_ID})")
        module.add_arguments(t)
        t.set_defaults(func=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:  # our errors name the file and the mismatch
        print(f"nnunet-sfda {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
