"""``nnunet-sfda benchmark``: generated domain shifts, every method through the stock commands, one results file.

For each shift family: a labelled source domain (shared by all shifts) trains one source model; the shifted target
gets training cases (unlabelled for adaptation) and separate test cases that no method trains on. Methods:

=======================  ===========================================================================================
``source_only``          the source model applied as is
``entropy_only``         ``nnUNetTrainerSFDA_entropyOnly`` (λ = 0; the AdaEnt baseline)
``tent``                 ``nnUNetTrainerSFDA_tent`` (entropy, normalisation affine parameters only)
``adami``                ``nnUNetTrainerSFDA`` in its default mode with the estimated prior
``adami_per_sample``     ``nnUNetTrainerSFDA_perSample``
``adami_batch_marginal`` ``nnUNetTrainerSFDA_batchMarginal``
``adami_true_size``      ``nnUNetTrainerSFDA_trueSize`` with the target's true ratios (analysis upper bound)
``oracle``               stock supervised training on the target training cases with their labels, source plans,
                         as many iterations as the source model had (upper bound)
=======================  ===========================================================================================

The estimated prior is the source labels' structure volumes applied to each target image (``estimate-prior
--labels``): numbers a source site can ship. The mode of ``adami`` equals one of the two explicit modes; that one is
not run twice (its entry says ``same_run_as``).

Methods and their order are :data:`nnunet_sfda.benchmark.methods.METHODS`.

Adaptation runs on a copy of the target whose ``labelsTr`` holds the training labels, so the curves can show a
monitoring Dice; the trainer never reads labels for training (``tests/test_end_to_end.py`` checks that adapted
weights are bit-identical with and without them). The oracle trains on the same copy.

All nnU-Net folders live inside the output folder, which the benchmark marks as its own when it creates it
(:mod:`~nnunet_sfda.benchmark.output_folder`): ``--overwrite`` and ``--resume`` act only on such a folder. Each
finished method writes ``runs/<shift>/<method>/method.json``; ``--resume`` skips what is finished.
"""
from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import SimpleITK as sitk

from nnunet_sfda import records
from nnunet_sfda.benchmark import figures, tables
from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS, StepRunner, nnunet_env
from nnunet_sfda.benchmark.methods import METHODS, SOURCE_TRAINER, Method, parse_methods
from nnunet_sfda.benchmark.output_folder import claim_output_folder
from nnunet_sfda.benchmark.phantom import (
    SHIFT_FAMILIES,
    PhantomSpec,
    resolve_family_names,
    write_cases,
    write_dataset,
)
from nnunet_sfda.files import atomic_write_json, read_json
from nnunet_sfda.metrics import evaluate_folder, read_label_map, summarize
from nnunet_sfda.prepared import RECORD_FILE_NAME
from nnunet_sfda.priors import PRIOR_FILE_NAME
from nnunet_sfda.settings import settings_env
from nnunet_sfda.target_prior import TRUE_SIZE_PRIOR_FILE_NAME

#: the run's arguments, written when the folder is made and read back by --resume
CONFIG_FILE_NAME = "benchmark.json"
SOURCE_ID = 701
FIRST_TARGET_ID = 710
GAP_MIN = 0.01  # gap_closure is null where oracle − source_only is smaller than this


@dataclass(frozen=True)
class Preset:
    name: str
    spec: PhantomSpec
    num_source: int
    num_target: int
    num_test: int
    configuration: str
    source_epochs: int
    source_iterations: int
    adapt_epochs: int
    adapt_iterations: int
    val_iterations: int
    default_shifts: str = "default"
    note: str = ""


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("micro", PhantomSpec(shape=(6, 40, 40)), 4, 3, 2, "2d", 1, 4, 1, 3, 1,
           note="smoke test only: numbers mean nothing"),
    Preset("quick", PhantomSpec(), 10, 10, 6, "2d", 3, 50, 12, 25, 5,
           note="the demo's size; 16.5 min measured on an idle 2-core CPU"),
    Preset("full", PhantomSpec(shape=(24, 128, 128), spacing=(3.0, 0.75, 0.75)), 20, 16, 8, "2d", 10, 100, 12, 25,
           5, note="for one GPU: every shift within one 8-minute command per shift"),
)}


@dataclass
class BenchmarkConfig:
    out: Path
    preset: Preset
    shifts: list[str]
    methods: list[str]
    device: str = "cpu"
    seed: int = 0


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("nnunet-sfda", "nnunetv2", "torch", "monai"):
        try:
            out[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name.replace("-", "_")] = "not installed"
    return out


def _machine(device: str) -> str:
    text = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


# ---------------------------------------------------------------------------------------------------- the run


class Benchmark:
    """One benchmark run; :meth:`run` returns the results dict also written to ``results.json``."""

    def __init__(self, config: BenchmarkConfig):
        self.cfg = config
        self.out = config.out
        self.p = config.preset
        # training runs with nnUNet_n_proc_DA (default 0: no augmentation workers, best on small CPUs); nnU-Net's
        # planner fails with 0, so only training commands get it
        self.train_env = {"nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0")}
        base = {k: v for k, v in nnunet_env(self.out).items() if k != "nnUNet_n_proc_DA"}
        self.progress = StepRunner(self.out, base)

    # -- data --------------------------------------------------------------------------------------------------
    def _source(self) -> tuple[str, Path]:
        name = f"Dataset{SOURCE_ID}_BenchSource"
        raw = self.out / "nnUNet_raw" / name
        cfg = self.p.configuration
        model = self.out / "nnUNet_results" / name / f"{SOURCE_TRAINER}__nnUNetPlans__{cfg}"
        if (model / "fold_all" / "checkpoint_final.pth").is_file():
            return name, model
        if not raw.is_dir():
            write_dataset(self.out / "nnUNet_raw", SOURCE_ID, "BenchSource", self.p.num_source, seed=self.cfg.seed,
                          spec=self.p.spec)
        self.progress.run("source: planning and preprocessing",
                          ["nnUNetv2_plan_and_preprocess", "-d", str(SOURCE_ID), "-c", cfg, "-np", "2"],
                          "source_plan")
        self.progress.run(f"source: training ({self.p.source_epochs} × {self.p.source_iterations} iterations)",
                          ["nnUNetv2_train", str(SOURCE_ID), cfg, "all", "-tr", SOURCE_TRAINER, "-device",
                           self.cfg.device], "source_train", {**self.train_env, **self._source_budget()})
        return name, model

    def _source_budget(self) -> dict[str, str]:
        return settings_env(num_epochs=self.p.source_epochs, iterations_per_epoch=self.p.source_iterations,
                            seed=self.cfg.seed)

    def _target(self, index: int, shift: str, model: Path) -> tuple[str, Path]:
        """The shifted target as a labelled copy prepared with the source plans, its test cases and priors."""
        family = SHIFT_FAMILIES[shift]
        dataset_id = FIRST_TARGET_ID + index
        short = "".join(part.capitalize() for part in shift.split("_"))
        name = f"Dataset{dataset_id}_BenchTarget{short}"
        data = self.out / "data" / shift
        pre = self.out / "nnUNet_preprocessed" / name
        seed = self.cfg.seed + 1000 * (index + 1)
        if not (self.out / "nnUNet_raw" / name).is_dir():
            write_dataset(self.out / "nnUNet_raw", dataset_id, f"BenchTarget{short}", self.p.num_target, seed=seed,
                          spec=self.p.spec, shifts=family.shifts, target_spacing=family.target_spacing,
                          labels_dir="in_dataset", overwrite=True)
            test_ids = [f"test_{i:03d}" for i in range(self.p.num_test)]
            write_cases(data / "test" / "images", data / "test" / "labels", test_ids, seed=seed + 1,
                        spec=self.p.spec, shifts=family.shifts, target_spacing=family.target_spacing,
                        overwrite=True)
        if not (pre / RECORD_FILE_NAME).is_file():
            self.progress.run(f"[{shift}] prepare-target", ["nnunet-sfda", "prepare-target", "-m", str(model), "-d",
                                                            name, "-c", self.p.configuration, "-np", "1"],
                              f"{shift}_prepare_target")
        source_labels = self.out / "nnUNet_raw" / f"Dataset{SOURCE_ID}_BenchSource" / "labelsTr"
        if not (pre / PRIOR_FILE_NAME).is_file():
            self.progress.run(f"[{shift}] estimate-prior from the source labels' volumes",
                              ["nnunet-sfda", "estimate-prior", "-d", name, "--labels", str(source_labels)],
                              f"{shift}_estimate_prior")
        if not (pre / TRUE_SIZE_PRIOR_FILE_NAME).is_file():
            self.progress.run(f"[{shift}] true-size prior (analysis only)",
                              ["nnunet-sfda", "estimate-prior", "-d", name, "--labels",
                               str(self.out / "nnUNet_raw" / name / "labelsTr"), "--true-size"],
                              f"{shift}_true_size_prior")
        return name, data

    # -- methods -----------------------------------------------------------------------------------------------
    def _predict(self, shift: str, method: str, dataset: str, trainer: str, data: Path, run_dir: Path) -> Path:
        pred = run_dir / "predictions"
        shutil.rmtree(pred, ignore_errors=True)
        self.progress.run(f"[{shift}] {method}: predicting {self.p.num_test} test cases",
                          ["nnUNetv2_predict", "-i", str(data / "test" / "images"), "-o", str(pred), "-d", dataset,
                           "-c", self.p.configuration, "-f", "all", "-tr", trainer, "-device", self.cfg.device,
                           *PREDICT_OPTIONS], f"{shift}_{method}_predict")
        return pred

    def _run_method(self, shift: str, method: Method, source: str, target: str, data: Path) -> dict:
        run_dir = self.out / "runs" / shift / method.name
        done = run_dir / "method.json"
        if done.is_file():
            return read_json(done, "the result of a finished benchmark method")
        run_dir.mkdir(parents=True, exist_ok=True)
        seconds = 0.0
        if method.name == "source_only":
            pred = self._predict(shift, method.name, source, SOURCE_TRAINER, data, run_dir)
        else:
            if method.name == "oracle":
                env = {**self.train_env, **self._source_budget()}
                budget = f"{self.p.source_epochs} × {self.p.source_iterations}"
            else:
                prior = (self.out / "nnUNet_preprocessed" / target / TRUE_SIZE_PRIOR_FILE_NAME
                         if method.prior == "true_size" else None)
                env = {**self.train_env, **settings_env(
                    seed=self.cfg.seed, num_epochs=self.p.adapt_epochs, iterations_per_epoch=self.p.adapt_iterations,
                    val_iterations=self.p.val_iterations, prior=prior)}
                budget = f"{self.p.adapt_epochs} × {self.p.adapt_iterations}"
            folder = self.out / "nnUNet_results" / target / f"{method.trainer}__nnUNetPlans__{self.p.configuration}"
            shutil.rmtree(folder, ignore_errors=True)  # a half-finished run from an interrupted benchmark
            seconds = self.progress.run(f"[{shift}] {method.name}: training ({budget} iterations)",
                                        ["nnUNetv2_train", target, self.p.configuration, "all", "-tr", method.trainer,
                                         "-device", self.cfg.device], f"{shift}_{method.name}_train", env)
            for record in (records.HISTORY_FILE_NAME, records.SETTINGS_FILE_NAME):
                if (folder / "fold_all" / record).is_file():
                    shutil.copy(folder / "fold_all" / record, run_dir / record)
            pred = self._predict(shift, method.name, target, method.trainer, data, run_dir)
        labels = read_json(self.out / "nnUNet_raw" / target / "dataset.json", "the target's dataset.json")["labels"]
        per_case = evaluate_folder(pred, data / "test" / "labels", labels)
        entry = {**summarize(per_case), "seconds": round(seconds, 1), "trainer": method.trainer,
                 "per_case_dice": {m.case: m.dice for m in per_case}}
        if (run_dir / records.SETTINGS_FILE_NAME).is_file():
            entry["prior_mode"] = records.load_run_settings(run_dir / records.SETTINGS_FILE_NAME).prior_mode
        atomic_write_json(done, entry, indent=1)
        dice = entry["dice"]
        self.progress.say(f"[{shift}] {method.name}: Dice {dice:.3f}" if dice is not None else
                          f"[{shift}] {method.name}: no Dice")
        return entry

    def _run_shift(self, index: int, shift: str, source: str, model: Path) -> dict:
        target, data = self._target(index, shift, model)
        results: dict[str, dict] = {}
        order = sorted(self.cfg.methods, key=lambda m: (m not in ("source_only", "adami"), list(METHODS).index(m)))
        for name in order:
            method = METHODS[name]
            mode = results.get("adami", {}).get("prior_mode")
            if method.prior_mode is not None and method.prior_mode == mode:
                results[name] = {**results["adami"], "same_run_as": "adami"}
                continue
            try:
                results[name] = self._run_method(shift, method, source, target, data)
            except RuntimeError as err:  # one failing method must not lose the others' results
                self.progress.say(f"[{shift}] {name} FAILED: {str(err).splitlines()[0]}")
                results[name] = {"dice": None, "error": str(err).splitlines()[0]}
        return {"methods": {m: results[m] for m in METHODS if m in results},
                "description": SHIFT_FAMILIES[shift].description, "target_dataset": target}

    def run(self) -> dict:
        atomic_write_json(self.out / CONFIG_FILE_NAME, {"preset": self.p.name, "shifts": self.cfg.shifts,
                                                        "methods": self.cfg.methods, "seed": self.cfg.seed,
                                                        "device": self.cfg.device}, indent=1)
        self.progress.say(f"benchmark preset '{self.p.name}' ({self.p.note}); shifts: {', '.join(self.cfg.shifts)}; "
                          f"methods: {', '.join(self.cfg.methods)}; folder {self.out}")
        source, model = self._source()
        shifts = {}
        for index, shift in enumerate(self.cfg.shifts):
            shifts[shift] = self._run_shift(index, shift, source, model)
            add_gap_closure(shifts[shift]["methods"])
        results = {"preset": self.p.name, "shift": self.cfg.shifts[0], "configuration": self.p.configuration,
                   "methods": shifts[self.cfg.shifts[0]]["methods"], "shifts": shifts,
                   "machine": _machine(self.cfg.device), "device": self.cfg.device, "versions": _versions(),
                   "budget": {"source_iterations": self.p.source_epochs * self.p.source_iterations,
                              "adaptation_iterations": self.p.adapt_epochs * self.p.adapt_iterations},
                   "minutes": round((time.monotonic() - self.progress.start) / 60, 1)}
        atomic_write_json(self.out / "results.json", results, indent=1)
        self._report(results)
        return results

    # -- report ------------------------------------------------------------------------------------------------
    def _report(self, results: dict) -> None:
        md, csv_file = tables.write_tables(results, self.out)
        folder = self.out / "figures"
        folder.mkdir(exist_ok=True)
        figures.plot_method_bars(results, folder / "dice_by_method.png")
        for shift, entry in results["shifts"].items():
            histories = {}
            for method in entry["methods"]:
                history = self.out / "runs" / shift / method / records.HISTORY_FILE_NAME
                if history.is_file():
                    histories[method] = records.load_history(history)
            if histories:
                figures.plot_adaptation_curves(histories, folder / f"curves_{shift}.png", title=f"shift: {shift}")
            self._examples(shift, folder / f"examples_{shift}.png")
        self.progress.say(f"results: {self.out / 'results.json'}, {md.name}, {csv_file.name}, figures/")

    def _examples(self, shift: str, path: Path) -> None:
        data = self.out / "data" / shift / "test"
        case = sorted(p.name[: -len("_0000.nii.gz")] for p in (data / "images").glob("*_0000.nii.gz"))[0]
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "images" / f"{case}_0000.nii.gz")))
        truth, _ = read_label_map(data / "labels" / f"{case}.nii.gz")
        predictions = {}
        for method in ("source_only", "adami", "oracle"):
            file = self.out / "runs" / shift / method / "predictions" / f"{case}.nii.gz"
            if file.is_file():
                predictions[method] = read_label_map(file)[0]
        figures.plot_examples(image, truth, predictions, path, title=f"shift {shift}, {case}")


def add_gap_closure(methods: dict[str, dict]) -> None:
    """gap_closure = (method − source_only) / (oracle − source_only), null where that gap is below 0.01 Dice."""
    base = (methods.get("source_only") or {}).get("dice")
    top = (methods.get("oracle") or {}).get("dice")
    gap = None if base is None or top is None else top - base
    for entry in methods.values():
        dice = entry.get("dice")
        entry["gap_closure"] = (None if gap is None or gap < GAP_MIN or dice is None
                                else round((dice - base) / gap, 4))


def run_benchmark(out: str | os.PathLike, preset: str = "quick", methods: str | None = None,
                  shifts: str | None = None, device: str = "cpu", resume: bool = False,
                  overwrite: bool = False, seed: int = 0) -> dict:
    """Run the benchmark into ``out`` (see the module docstring); returns the results dict."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    chosen = PRESETS[preset]
    shift_names = resolve_family_names(shifts or chosen.default_shifts)
    method_names = parse_methods(methods)
    out = Path(out).resolve()
    claim_output_folder(out, "benchmark", overwrite=overwrite, resume=resume, legacy_file=CONFIG_FILE_NAME)
    if resume:
        saved = read_json(out / CONFIG_FILE_NAME, "the arguments of the benchmark run to resume")
        if saved["preset"] != preset:
            raise ValueError(f"{out} was run with preset {saved['preset']!r}; resume it with --preset "
                             f"{saved['preset']}")
    return Benchmark(BenchmarkConfig(out, chosen, shift_names, method_names, device, seed)).run()


def result_summary(results: dict) -> str:
    """A few lines for the console: Dice and gap closure per method of each shift."""
    lines = []
    for shift, entry in results["shifts"].items():
        lines.append(f"shift {shift}:")
        for name, m in entry["methods"].items():
            dice = "failed" if m.get("dice") is None else f"{m['dice']:.3f}"
            gap = "" if m.get("gap_closure") is None else f"  gap closure {m['gap_closure']:+.2f}"
            same = f"  (same run as {m['same_run_as']})" if m.get("same_run_as") else ""
            lines.append(f"  {name:<22} Dice {dice}{gap}{same}")
    return "\n".join(lines)


__all__ = ["PRESETS", "Benchmark", "BenchmarkConfig", "Preset", "add_gap_closure", "result_summary", "run_benchmark"]
