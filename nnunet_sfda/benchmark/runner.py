"""``nnunet-sfda benchmark``: generated domain shifts, every method through the stock commands, one results file.

For each shift family: a labelled source domain (shared by all families of one anatomy: the phantom or the real
brain, :mod:`~nnunet_sfda.benchmark.phantom.brain`) trains one source model; the shifted target
gets training cases (unlabelled for adaptation) and separate test cases that no method trains on. Methods:

=======================  ===========================================================================================
``source_only``          the source model applied as is
``entropy_only``         ``nnUNetTrainerSFDA_entropyOnly`` (λ = 0; the AdaEnt baseline)
``tent``                 ``nnUNetTrainerSFDA_tent`` (entropy, normalisation affine parameters only)
``adami``                ``nnUNetTrainerSFDA_AdaMI`` in its default mode with the estimated prior
``adami_per_sample``     ``nnUNetTrainerSFDA_perSample``
``adami_batch_marginal`` ``nnUNetTrainerSFDA_batchMarginal``
``adami_true_size``      ``nnUNetTrainerSFDA_trueSize`` with the target's true ratios (analysis upper bound)
``adami_coverage``       ``nnUNetTrainerSFDA_coverage`` (coverage-weighted crop ratios)
``consistency``          ``nnUNetTrainerSFDA_consistency`` (two-view soft-Dice agreement, DG-TTA's objective)
``consistency_adami``    ``nnUNetTrainerSFDA_consistencyAdaMI``
``self_training``        ``nnUNetTrainerSFDA_selfTrain`` (from the source model)
``adami_self_training``  ``nnUNetTrainerSFDA``, the default: AdaMI, then self-training (stage 1 is ``adami``'s run)
``oracle``               stock supervised training on the target training cases with their labels, source plans,
                         as many iterations as the source model had (upper bound)
=======================  ===========================================================================================

The estimated prior is the source labels' structure volumes applied to each target image (``estimate-prior
--labels``): numbers a source site can ship. The mode of ``adami`` equals one of the two explicit modes; that one is
not run twice (its entry says ``same_run_as``).

Methods and their order are :data:`nnunet_sfda.benchmark.methods.METHODS`.

Adaptation runs on a copy of the target whose ``labelsTr`` holds the training labels, so the curves can show a
monitoring Dice; the trainers never read labels for training (``tests/test_new_trainers.py`` checks that adapted
weights are bit-identical with and without them). The oracle trains on the same copy.

All nnU-Net folders live inside the output folder, which the benchmark marks as its own when it creates it
(:mod:`nnunet_sfda.output_folder`): ``--overwrite`` and ``--resume`` act only on such a folder. Each finished
method writes ``runs/<shift>/<method>/method.json``; ``--resume`` skips what is finished. The files it writes and
reads back are the models of :mod:`~nnunet_sfda.benchmark.result_files`; the presets are
:data:`nnunet_sfda.benchmark.presets.PRESETS`. ``environment.txt`` lists the installed distributions
(:mod:`nnunet_sfda.environment`); a resume in a changed environment says so and keeps both lists.
"""
from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from nnunet_sfda import records
from nnunet_sfda.benchmark import figures, tables
from nnunet_sfda.benchmark.candidate_dice import candidate_test_dice
from nnunet_sfda.benchmark.commands import PREDICT_OPTIONS, StepRunner, nnunet_env, training_env
from nnunet_sfda.benchmark.methods import METHODS, SOURCE_TRAINER, Method, parse_methods
from nnunet_sfda.benchmark.phantom import (
    SHIFT_FAMILIES,
    ShiftFamily,
    resolve_family_names,
    write_cases,
    write_dataset,
)
from nnunet_sfda.benchmark.phantom.brain import template_folder
from nnunet_sfda.benchmark.presets import Preset, preset_named
from nnunet_sfda.benchmark.result_files import (
    BENCHMARK_ARGUMENTS_FILE_NAME,
    BENCHMARK_RESULTS_FILE_NAME,
    CANDIDATE_DICE_FILE_NAME,
    METHOD_FILE_NAME,
    BenchmarkArguments,
    BenchmarkResults,
    Budget,
    CandidateDice,
    FailedMethod,
    MethodEntry,
    MethodRecord,
    ShiftResults,
    read_result_file,
    write_result_file,
)
from nnunet_sfda.benchmark.seed_table import gap_closure
from nnunet_sfda.environment import key_versions, record_environment
from nnunet_sfda.files import read_json
from nnunet_sfda.metrics import evaluate_folder, read_label_map, summarize
from nnunet_sfda.output_folder import claim_output_folder
from nnunet_sfda.prepared import RECORD_FILE_NAME
from nnunet_sfda.priors import PRIOR_FILE_NAME
from nnunet_sfda.settings import settings_env
from nnunet_sfda.target_prior import TRUE_SIZE_PRIOR_FILE_NAME

SOURCE_IDS = {"phantom": 701, "brain": 702}  # one labelled source domain per anatomy
FIRST_TARGET_ID = 710


@dataclass
class BenchmarkConfig:
    out: Path
    preset: Preset
    shifts: list[str]
    methods: list[str]
    device: str = "cpu"
    seed: int = 0
    #: the Python of DG-TTA's own environment (``scripts/setup_dgtta.sh``), for the ``dgtta`` peer
    dgtta_python: Path | None = None
    #: keep every candidate of each adaptation run's label-free choice and write their test Dice
    #: (``runs/<shift>/<method>/candidate_dice.json``, read by ``scripts/evaluate_choice.py``)
    every_epoch: bool = False


DGTTA_DRIVER = Path(__file__).with_name("dgtta_driver.py")


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
        self.train_env = training_env()
        self.progress = StepRunner(self.out, nnunet_env(self.out))

    # -- data --------------------------------------------------------------------------------------------------
    def _source(self, family: ShiftFamily) -> tuple[str, Path]:
        """The labelled source domain and its trained model for the families made of ``family``'s anatomy."""
        source_id = SOURCE_IDS[family.anatomy]
        short = "BenchSource" + ("" if family.anatomy == "phantom" else family.anatomy.capitalize())
        name = f"Dataset{source_id}_{short}"
        raw = self.out / "nnUNet_raw" / name
        cfg = self.p.configuration
        model = self.out / "nnUNet_results" / name / f"{SOURCE_TRAINER}__nnUNetPlans__{cfg}"
        if (model / "fold_all" / "checkpoint_final.pth").is_file():
            return name, model
        if not raw.is_dir():
            write_dataset(self.out / "nnUNet_raw", source_id, short, self.p.num_source, seed=self.cfg.seed,
                          spec=family.case_spec(self.p.spec))
        step = "source" if family.anatomy == "phantom" else f"source_{family.anatomy}"
        self.progress.run(f"{step}: planning and preprocessing",
                          ["nnUNetv2_plan_and_preprocess", "-d", str(source_id), "-c", cfg, "-np", "2"],
                          f"{step}_plan")
        self.progress.run(f"{step}: training ({self.p.source_epochs} × {self.p.source_iterations} iterations)",
                          ["nnUNetv2_train", str(source_id), cfg, "all", "-tr", SOURCE_TRAINER, "-device",
                           self.cfg.device], f"{step}_train", {**self.train_env, **self._source_budget()})
        return name, model

    def _source_budget(self) -> dict[str, str]:
        return settings_env(num_epochs=self.p.source_epochs, iterations_per_epoch=self.p.source_iterations,
                            seed=self.cfg.seed)

    def _target(self, index: int, shift: str, source: str, model: Path) -> tuple[str, Path]:
        """The shifted target as a labelled copy prepared with the source plans, its test cases and priors."""
        family = SHIFT_FAMILIES[shift]
        dataset_id = FIRST_TARGET_ID + index
        short = "".join(part.capitalize() for part in shift.split("_"))
        name = f"Dataset{dataset_id}_BenchTarget{short}"
        data = self.out / "data" / shift
        pre = self.out / "nnUNet_preprocessed" / name
        seed = self.cfg.seed + 1000 * (index + 1)
        if not (self.out / "nnUNet_raw" / name).is_dir():
            spec = family.case_spec(self.p.spec)
            write_dataset(self.out / "nnUNet_raw", dataset_id, f"BenchTarget{short}", self.p.num_target, seed=seed,
                          spec=spec, shifts=family.shifts, target_spacing=family.target_spacing,
                          labels_dir="in_dataset", overwrite=True)
            test_ids = [f"test_{i:03d}" for i in range(self.p.num_test)]
            write_cases(data / "test" / "images", data / "test" / "labels", test_ids, seed=seed + 1,
                        spec=spec, shifts=family.shifts, target_spacing=family.target_spacing,
                        overwrite=True)
        if not (pre / RECORD_FILE_NAME).is_file():
            self.progress.run(f"[{shift}] prepare-target", ["nnunet-sfda", "prepare-target", "-m", str(model), "-d",
                                                            name, "-c", self.p.configuration, "-np", "1"],
                              f"{shift}_prepare_target")
        source_labels = self.out / "nnUNet_raw" / source / "labelsTr"
        if not (pre / PRIOR_FILE_NAME).is_file():
            self.progress.run(f"[{shift}] estimate-prior from the source labels' volumes",
                              ["nnunet-sfda", "estimate-prior", "-d", name, "--labels", str(source_labels)],
                              f"{shift}_estimate_prior")
        wants_true_size = any(METHODS[m].prior == "true_size" for m in self.cfg.methods)
        if wants_true_size and not (pre / TRUE_SIZE_PRIOR_FILE_NAME).is_file():
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

    def _run_method(self, shift: str, method: Method, source: str, target: str, data: Path) -> MethodEntry:
        run_dir = self.out / "runs" / shift / method.name
        done = run_dir / METHOD_FILE_NAME
        if done.is_file():
            return read_result_file(MethodRecord, done, "the result of a finished benchmark method",
                                    f"delete {run_dir} and pass --resume again to rerun {method.name}").entry()
        run_dir.mkdir(parents=True, exist_ok=True)
        seconds = 0.0
        if method.name == "source_only":
            pred = self._predict(shift, method.name, source, SOURCE_TRAINER, data, run_dir)
        elif method.peer:
            pred, seconds = self._run_dgtta(shift, source, data, run_dir)
        else:
            if method.name == "oracle":
                env = {**self.train_env, **self._source_budget()}
                budget = f"{self.p.source_epochs} × {self.p.source_iterations}"
            else:
                prior = (self.out / "nnUNet_preprocessed" / target / TRUE_SIZE_PRIOR_FILE_NAME
                         if method.prior == "true_size" else None)
                env = {**self.train_env, **settings_env(
                    seed=self.cfg.seed, num_epochs=self.p.adapt_epochs, iterations_per_epoch=self.p.adapt_iterations,
                    val_iterations=self.p.val_iterations, prior=prior, save_every_epoch=self.cfg.every_epoch or None)}
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
        dataset_json = read_json(self.out / "nnUNet_raw" / target / "dataset.json", "the target's dataset.json")
        if self.cfg.every_epoch and not method.peer and method.name not in ("source_only", "oracle"):
            self._candidate_dice(shift, method.name, dataset_json, folder, data, run_dir)
        per_case = evaluate_folder(pred, data / "test" / "labels", dataset_json["labels"])
        settings = run_dir / records.SETTINGS_FILE_NAME
        trainer = f"dg-tta (peer, {self.p.dgtta_budget_text})" if method.peer else method.trainer
        record = MethodRecord(**summarize(per_case), seconds=round(seconds, 1), trainer=trainer,
                              per_case_dice={m.case: m.dice for m in per_case},
                              prior_mode=records.load_run_settings(settings).prior_mode if settings.is_file() else None)
        write_result_file(record, done)
        self.progress.say(f"[{shift}] {method.name}: Dice {record.dice:.3f}" if record.dice is not None else
                          f"[{shift}] {method.name}: no Dice")
        return record.entry()

    def _candidate_dice(self, shift: str, method: str, dataset_json: dict, folder: Path, data: Path,
                        run_dir: Path) -> None:
        """The test Dice of every candidate of the run's label-free choice (the source and each epoch)."""
        self.progress.say(f"[{shift}] {method}: test Dice of every candidate of the label-free choice ...")
        dice = candidate_test_dice(folder / "fold_all", data / "test" / "images", data / "test" / "labels",
                                   dataset_json, read_json(folder / "plans.json", "the run's plans.json"),
                                   self.cfg.device)
        ending = dataset_json["file_ending"]
        cases = sorted(p.name[: -len(ending)] for p in (data / "test" / "labels").glob(f"*{ending}"))
        write_result_file(CandidateDice(run=f"{shift}/{method}", seed=self.cfg.seed, test_cases=cases, dice=dice),
                          run_dir / CANDIDATE_DICE_FILE_NAME)

    def _run_dgtta(self, shift: str, source: str, data: Path, run_dir: Path) -> tuple[Path, float]:
        """The DG-TTA peer on the source model and the test cases (it adapts per scan), in its own environment
        (:func:`run_benchmark` has refused a 2d preset)."""
        python = self.cfg.dgtta_python
        if python is None or not Path(python).is_file():
            raise RuntimeError(f"no DG-TTA environment at {python}: run `bash scripts/setup_dgtta.sh` or pass "
                               "--dgtta-python")
        epochs, patches, ensemble = self.p.dgtta_budget
        model = self.out / "nnUNet_results" / source / f"{SOURCE_TRAINER}__nnUNetPlans__{self.p.configuration}"
        pred = run_dir / "predictions"
        shutil.rmtree(pred, ignore_errors=True)
        seconds = self.progress.run(
            f"[{shift}] dgtta: adapting per test case ({self.p.dgtta_budget_text}) and predicting",
            [str(python), str(DGTTA_DRIVER), str(model), str(data / "test" / "images"), str(pred),
             "--device", self.cfg.device, "--epochs", str(epochs), "--patches-per-epoch", str(patches),
             "--ensemble", str(ensemble), "--seed", str(self.cfg.seed), "--work", str(run_dir / "dgtta_work")],
            f"{shift}_dgtta")
        return pred, seconds

    def _run_shift(self, index: int, shift: str) -> ShiftResults:
        source, model = self._source(SHIFT_FAMILIES[shift])
        target, data = self._target(index, shift, source, model)
        results: dict[str, MethodEntry | FailedMethod] = {}
        order = sorted(self.cfg.methods, key=lambda m: (m not in ("source_only", "adami"), list(METHODS).index(m)))
        for name in order:
            method = METHODS[name]
            adami = results.get("adami")
            mode = adami.prior_mode if isinstance(adami, MethodEntry) else None
            if method.prior_mode is not None and method.prior_mode == mode:
                results[name] = adami.model_copy(update={"same_run_as": "adami"})
                continue
            try:
                results[name] = self._run_method(shift, method, source, target, data)
            except RuntimeError as err:  # one failing method must not lose the others' results
                self.progress.say(f"[{shift}] {name} FAILED: {str(err).splitlines()[0]}")
                results[name] = FailedMethod(error=str(err).splitlines()[0])
        closures = gap_closures({m: entry.dice for m, entry in results.items()})
        methods = {m: results[m].model_copy(update={"gap_closure": closures[m]}) if isinstance(results[m], MethodEntry)
                   else results[m] for m in METHODS if m in results}
        return ShiftResults(methods=methods, description=SHIFT_FAMILIES[shift].description, target_dataset=target)

    def run(self) -> dict:
        write_result_file(BenchmarkArguments(preset=self.p.name, shifts=self.cfg.shifts, methods=self.cfg.methods,
                                             seed=self.cfg.seed, device=self.cfg.device),
                          self.out / BENCHMARK_ARGUMENTS_FILE_NAME)
        self.progress.say(f"benchmark preset '{self.p.name}' ({self.p.note}); shifts: {', '.join(self.cfg.shifts)}; "
                          f"methods: {', '.join(self.cfg.methods)}; folder {self.out}")
        written, changed = record_environment(self.out)
        if changed:
            self.progress.say(f"WARNING: this environment differs from the one the run started in ({len(changed)} "
                              f"distributions, e.g. {'; '.join(changed[:3])}): the methods resumed now were made in "
                              f"another environment; written to {written.name}")
        shifts = {shift: self._run_shift(index, shift) for index, shift in enumerate(self.cfg.shifts)}
        results = BenchmarkResults(
            preset=self.p.name, shift=self.cfg.shifts[0], configuration=self.p.configuration,
            methods=shifts[self.cfg.shifts[0]].methods, shifts=shifts, machine=_machine(self.cfg.device),
            device=self.cfg.device, versions=key_versions(),
            budget=Budget(source_iterations=self.p.source_epochs * self.p.source_iterations,
                          adaptation_iterations=self.p.adapt_epochs * self.p.adapt_iterations),
            minutes=round((time.monotonic() - self.progress.start) / 60, 1))
        write_result_file(results, self.out / BENCHMARK_RESULTS_FILE_NAME)
        content = results.model_dump()
        self._report(content)
        return content

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
        self.progress.say(f"results: {self.out / BENCHMARK_RESULTS_FILE_NAME}, {md.name}, {csv_file.name}, figures/")

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


def gap_closures(dice: Mapping[str, float | None]) -> dict[str, float | None]:
    """Per method (``dice``: method -> Dice), :func:`~nnunet_sfda.benchmark.seed_table.gap_closure` against
    source_only and oracle, rounded to 4 digits; None where the gap is too small, an end is missing, or the method
    has no Dice."""
    base, top = dice.get("source_only"), dice.get("oracle")
    closures = {name: None if base is None or top is None or value is None else gap_closure(value, base, top)
                for name, value in dice.items()}
    return {name: None if c is None else round(c, 4) for name, c in closures.items()}


def run_benchmark(out: str | os.PathLike, preset: str = "quick", methods: str | None = None,
                  shifts: str | None = None, device: str = "cpu", resume: bool = False,
                  overwrite: bool = False, seed: int = 0, peers: str | None = None,
                  dgtta_python: str | os.PathLike | None = None, every_epoch: bool = False) -> dict:
    """Run the benchmark into ``out`` (see the module docstring); returns the results dict. ``peers``
    (``"dgtta"``) adds other projects' methods, run in their own environments (``dgtta_python``); ``every_epoch``
    also measures every candidate of each adaptation run's label-free choice on the test cases."""
    chosen = preset_named(preset)
    shift_names = resolve_family_names(shifts or chosen.default_shifts)
    method_names = parse_methods(methods, peers)
    if "dgtta" in method_names and chosen.configuration != "3d_fullres":
        raise ValueError(f"--peers dgtta needs a 3d preset (DG-TTA is 3d only): pass --preset quick3d, not {preset}")
    if any(SHIFT_FAMILIES[name].anatomy == "brain" for name in shift_names):
        template_folder()  # without nilearn: its one-line error before the output folder is made
    out = Path(out).resolve()
    claim_output_folder(out, "benchmark", overwrite=overwrite, resume=resume,
                        legacy_file=BENCHMARK_ARGUMENTS_FILE_NAME)
    if resume:
        saved = read_result_file(BenchmarkArguments, out / BENCHMARK_ARGUMENTS_FILE_NAME,
                                 "the arguments of the benchmark run to resume",
                                 "start the run again with --overwrite (or into another -o)")
        if saved.preset != preset:
            raise ValueError(f"{out} was run with preset {saved.preset!r}; resume it with --preset {saved.preset}")
    python = None if dgtta_python is None else Path(dgtta_python).absolute()
    return Benchmark(BenchmarkConfig(out, chosen, shift_names, method_names, device, seed, python,
                                     every_epoch)).run()


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


__all__ = ["Benchmark", "BenchmarkConfig", "gap_closures", "result_summary", "run_benchmark"]
