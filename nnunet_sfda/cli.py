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


def _estimate_prior(args: argparse.Namespace) -> None:
    from nnunet_sfda.priors import format_prior_table
    from nnunet_sfda.target import estimate_constant_prior, install_prior

    if args.install is not None:
        path = install_prior(args.d, args.install, overwrite=args.overwrite)
        print(f"Installed {args.install} as {path}")
        return
    if args.ratios is None:
        raise ValueError("give --ratios r0 r1 ... (one per label in dataset.json order) or --install FILE")
    prior, path = estimate_constant_prior(args.d, args.ratios, output=args.o, overwrite=args.overwrite)
    print(format_prior_table(prior))
    print(f"Wrote {path}")


def _demo(args: argparse.Namespace) -> None:
    from nnunet_sfda.benchmark.demo import run_demo

    run_demo(Path(args.o), overwrite=args.overwrite, device=args.device)


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

    p = sub.add_parser("estimate-prior", help="write the class-ratio prior the trainer reads")
    p.add_argument("-d", required=True, help="target dataset id or name (prepared with prepare-target)")
    p.add_argument("--ratios", type=float, nargs="+", help="constant ratios, one per label in dataset.json order")
    p.add_argument("--install", default=None, help="install an existing prior file as the dataset's prior")
    p.add_argument("-o", default=None, help="write here instead of <nnUNet_preprocessed>/DatasetXXX/sfda_prior.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prior file")
    p.set_defaults(func=_estimate_prior)

    p = sub.add_parser("demo", help="generate a source and a shifted target, train, adapt, compare Dice")
    p.add_argument("-o", default="sfda_demo", help="working folder (all nnU-Net folders live inside it)")
    p.add_argument("-device", default="cpu", help="cpu or cuda")
    p.add_argument("--overwrite", action="store_true", help="delete an existing working folder first")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # our errors name the file and the mismatch
        print(f"nnunet-sfda {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
