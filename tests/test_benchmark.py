"""``nnunet-sfda benchmark`` and ``demo``: argument checks, gap closure, which output folders they may replace, and a
smoke run of the whole benchmark on the micro preset."""
from __future__ import annotations

import csv
import json
import subprocess

import pytest

from nnunet_sfda.benchmark.commands import console_script, nnunet_env, training_env
from nnunet_sfda.benchmark.demo import run_demo
from nnunet_sfda.benchmark.methods import METHODS, PEERS, parse_methods
from nnunet_sfda.benchmark.presets import preset_named
from nnunet_sfda import records
from nnunet_sfda.benchmark.result_files import (
    CANDIDATE_DICE_FILE_NAME,
    DEMO_RESULTS_FILE_NAME,
    BenchmarkArguments,
    CandidateDice,
    DemoResults,
    MethodRecord,
    ResultFileError,
    read_result_file,
    write_result_file,
)
from nnunet_sfda.benchmark.runner import Benchmark, BenchmarkConfig, gap_closures, run_benchmark
from nnunet_sfda.environment import ENVIRONMENT_FILE_NAME, parse_environment
from nnunet_sfda.output_folder import MARKER_FILE_NAME, claim_output_folder


def test_parse_methods_keeps_canonical_order_and_names_unknown_ones():
    assert parse_methods("all") == [m for m in METHODS if m not in PEERS]
    # without --methods: AdaMI alone and the default side by side, the consistency baseline, and both bounds
    assert parse_methods(None) == ["source_only", "adami", "consistency", "adami_self_training", "oracle"]
    assert parse_methods("oracle, adami,source_only") == ["source_only", "adami", "oracle"]
    with pytest.raises(ValueError, match="unknown method adami_v2; known: source_only, entropy_only, tent"):
        parse_methods("adami,adami_v2")
    # a peer runs only when asked for, in the canonical order (before the oracle)
    assert parse_methods("oracle,adami", peers="dgtta") == ["adami", "dgtta", "oracle"]
    with pytest.raises(ValueError, match=r"unknown method dgtta; .*\(peers go in --peers: dgtta\)"):
        parse_methods("dgtta")
    with pytest.raises(ValueError, match="unknown peer tent; known: dgtta"):
        parse_methods(None, peers="tent")


def test_the_dgtta_peer_needs_a_3d_preset_and_its_environment(tmp_path):
    with pytest.raises(ValueError, match="--peers dgtta needs a 3d preset .* pass --preset quick3d, not quick"):
        run_benchmark(tmp_path / "bench", preset="quick", peers="dgtta")
    assert not (tmp_path / "bench").exists()  # refused before the output folder is made
    bench = Benchmark(BenchmarkConfig(tmp_path / "b3", preset_named("quick3d"), ["default"], ["dgtta"],
                                      dgtta_python=tmp_path / "missing" / "python"))
    with pytest.raises(RuntimeError, match="no DG-TTA environment at .*missing/python: run `bash "
                                           "scripts/setup_dgtta.sh` or pass --dgtta-python"):
        bench._run_dgtta("default", "Dataset701_BenchSource", tmp_path / "data", tmp_path / "run")


def test_only_training_commands_get_the_callers_augmentation_workers(tmp_path, monkeypatch):
    # a user who exported nnUNet_n_proc_DA=0 for training (the README's advice on a small CPU): nnU-Net's planner
    # crashes with it (torch.set_num_threads(0)), so the demo's and the benchmark's planning must not see it
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    assert "nnUNet_n_proc_DA" not in nnunet_env(tmp_path)
    assert training_env() == {"nnUNet_n_proc_DA": "0"}
    monkeypatch.setenv("nnUNet_n_proc_DA", "3")
    assert training_env() == {"nnUNet_n_proc_DA": "3"} and "nnUNet_n_proc_DA" not in nnunet_env(tmp_path)
    monkeypatch.delenv("nnUNet_n_proc_DA")
    assert training_env() == {"nnUNet_n_proc_DA": "0"}  # none set: no worker processes
    assert nnunet_env(tmp_path, nnUNet_n_proc_DA="2")["nnUNet_n_proc_DA"] == "2"  # asked for explicitly: kept


def test_gap_closure():
    closures = gap_closures({"source_only": 0.6, "adami": 0.75, "tent": 0.5, "broken": None, "oracle": 0.8})
    assert closures["adami"] == pytest.approx(0.75)
    assert closures["tent"] == pytest.approx(-0.5)
    assert closures["source_only"] == 0 and closures["oracle"] == 1
    assert closures["broken"] is None
    assert set(gap_closures({"source_only": 0.795, "adami": 0.8, "oracle": 0.8}).values()) == {None}  # tiny gap
    assert gap_closures({"source_only": 0.6, "adami": 0.7})["adami"] is None  # no oracle


def _method_record(**changes) -> dict:
    return {"dice": 0.7, "dice_per_class": {"organ": {"mean": 0.7, "sd": 0.1}},
            "assd_mm": {"organ": {"mean": 1.5, "sd": 0.5, "n": 2}},
            "hd95_mm": {"organ": {"mean": None, "sd": None, "n": 0}},
            "num_cases": 2, "seconds": 12.5, "trainer": "nnUNetTrainerSFDA_AdaMI",
            "per_case_dice": {"test_000": {"organ": 0.6}, "test_001": {"organ": 0.8}}, "prior_mode": "per_sample",
            **changes}


def test_method_file_round_trips_migrates_unversioned_and_names_bad_fields(tmp_path):
    path = tmp_path / "method.json"
    record = MethodRecord(**_method_record())
    write_result_file(record, path)
    assert read_result_file(MethodRecord, path, "a method", "rerun it") == record
    assert record.entry().gap_closure is None and record.entry().dice == 0.7
    path.write_text(json.dumps(_method_record()))  # written before the files were versioned: same fields
    assert read_result_file(MethodRecord, path, "a method", "rerun it") == record
    path.write_text(json.dumps(_method_record(num_cases="two")))
    with pytest.raises(ResultFileError, match=r"method\.json: invalid nnunet-sfda-benchmark-method "
                                              r"\(num_cases: .*integer.*\); rerun it$"):
        read_result_file(MethodRecord, path, "a method", "rerun it")
    content = record.model_dump()
    path.write_text(json.dumps({**content, "format_version": 2}))
    with pytest.raises(ResultFileError, match="format_version 2 is newer than this nnunet-sfda reads"):
        read_result_file(MethodRecord, path, "a method", "rerun it")
    path.write_text(json.dumps({**content, "surprise": 1}))
    with pytest.raises(ResultFileError, match=r"method\.json: invalid nnunet-sfda-benchmark-method \(surprise: Extra inputs"):
        read_result_file(MethodRecord, path, "a method", "rerun it")
    path.write_text(json.dumps({**BenchmarkArguments(preset="micro", shifts=["default"], methods=["adami"], seed=0,
                                                     device="cpu").model_dump()}))
    with pytest.raises(ResultFileError, match="not an nnunet-sfda-benchmark-method file"):
        read_result_file(MethodRecord, path, "a method", "rerun it")


def test_resume_reads_the_arguments_through_their_model(tmp_path):
    out = tmp_path / "bench"
    claim_output_folder(out, "benchmark", overwrite=False)
    (out / "benchmark.json").write_text(json.dumps({"preset": "quick", "shifts": ["default"], "methods": ["adami"],
                                                    "seed": 0, "device": "cpu"}))  # unversioned: migrated
    with pytest.raises(ValueError, match="was run with preset 'quick'; resume it with --preset quick"):
        run_benchmark(out, preset="micro", resume=True)
    (out / "benchmark.json").write_text(json.dumps({"preset": "quick", "shifts": []}))
    with pytest.raises(ResultFileError, match=r"benchmark\.json: .*shifts: .*; start the run again with --overwrite"):
        run_benchmark(out, preset="quick", resume=True)


def test_demo_results_file_is_versioned(tmp_path):
    path = tmp_path / DEMO_RESULTS_FILE_NAME
    legacy = {"source_only_dice": 0.73, "adapted_dice": 0.86, "seconds": 600.0, "test_cases": ["test_000"],
              "shift_family": "default", "shift": ["contrast", "noise"]}
    path.write_text(json.dumps(legacy))
    results = read_result_file(DemoResults, path, "the demo's results", "rerun the demo")
    assert results.adapted_dice == 0.86 and results.format_version == 1
    write_result_file(results, path)
    assert json.loads(path.read_text()) == {"format": "nnunet-sfda-demo-results", "format_version": 1, **legacy,
                                            "last_epoch_dice": None}  # not measured before the label-free choice
    path.write_text(json.dumps({**legacy, "format": "nnunet-sfda-demo-results", "format_version": 0}))
    with pytest.raises(ResultFileError, match="format_version 0, expected 1; rerun the demo"):
        read_result_file(DemoResults, path, "the demo's results", "rerun the demo")


def test_never_replaces_or_resumes_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "chapter1.tex").write_text("keep me")
    for options in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(FileExistsError, match="was not made by nnunet-sfda benchmark .*never replaced"):
            run_benchmark(tmp_path, preset="micro", **options)
    with pytest.raises(ValueError, match="not both"):
        run_benchmark(tmp_path, preset="micro", resume=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chapter1.tex"]
    assert (tmp_path / "chapter1.tex").read_text() == "keep me"


def test_output_folder_marker_rules(tmp_path):
    ours = tmp_path / "bench"
    assert claim_output_folder(ours, "benchmark", overwrite=True) is False  # new: created, nothing replaced
    assert json.loads((ours / MARKER_FILE_NAME).read_text()) == {"format_version": 1, "made_by": "benchmark"}
    (ours / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds an earlier nnunet-sfda benchmark run; pass --resume"):
        claim_output_folder(ours, "benchmark", overwrite=False)
    assert claim_output_folder(ours, "benchmark", overwrite=False, resume=True) is False
    assert (ours / "results.json").is_file()  # resume keeps everything
    assert claim_output_folder(ours, "benchmark", overwrite=True) is True
    assert sorted(p.name for p in ours.iterdir()) == [MARKER_FILE_NAME]
    # the demo's folder is not the benchmark's, and the other way round
    with pytest.raises(FileExistsError, match="made by nnunet-sfda benchmark"):
        claim_output_folder(ours, "demo", overwrite=True)
    # a folder of an earlier version (no marker) is recognised by the file it left, then marked
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "benchmark.json").write_text("{}")
    assert claim_output_folder(legacy, "benchmark", overwrite=False, resume=True, legacy_file="benchmark.json") is False
    assert (legacy / MARKER_FILE_NAME).is_file()
    # a broken marker is not taken as ours
    (legacy / MARKER_FILE_NAME).write_text('{"format_version": 1, "made_by": "someone else"}')
    with pytest.raises(ValueError, match=r"invalid nnunet-sfda output marker \(made_by: .*choose another -o$"):
        claim_output_folder(legacy, "benchmark", overwrite=True)
    assert (legacy / "benchmark.json").is_file()
    # resuming needs an earlier run
    with pytest.raises(FileExistsError, match="no earlier nnunet-sfda benchmark run to resume"):
        claim_output_folder(tmp_path / "new", "benchmark", overwrite=False, resume=True)


def test_output_folder_that_is_a_file(tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    with pytest.raises(ValueError, match=r"-o .*results.txt is a file; give a folder"):
        run_benchmark(file, preset="micro", overwrite=True)
    with pytest.raises(ValueError, match="is a file; give a folder"):
        run_demo(file, overwrite=True)
    assert file.read_text() == "keep me"


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="was not made by nnunet-sfda demo"):
        run_demo(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    # an earlier demo of a version without markers left demo_results.json: --overwrite may replace it
    old = tmp_path / "sfda_demo"
    old.mkdir()
    (old / "demo_results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds an earlier nnunet-sfda demo run; pass --overwrite"):
        run_demo(old)


def test_cli_refuses_to_overwrite_a_foreign_folder_in_one_line(tmp_path):
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter1.tex").write_text("keep me")
    proc = subprocess.run([console_script("nnunet-sfda"), "benchmark", "--preset", "micro", "-o",
                           str(tmp_path / "thesis"), "--overwrite"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("nnunet-sfda benchmark: error: ") and "never replaced" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (tmp_path / "thesis" / "chapter1.tex").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "huge"}, "unknown preset 'huge'; known: micro, quick, quick3d, full"),
    ({"shifts": "default,earthquake"}, "earthquake"),
    ({"methods": "magic"}, "unknown method magic"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises((ValueError, KeyError), match=message):
        run_benchmark(tmp_path / "out", **{"preset": "micro", **kwargs})
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_micro_benchmark_end_to_end(tmp_path):
    out = tmp_path / "bench"
    # no nnU-Net variable of the caller's; the benchmark sets its own folders inside -o
    env = nnunet_env(tmp_path, drop_prefix="nnUNet", processes=1, nnUNet_n_proc_DA="0")
    # the methods this test's checks need (same_run_as); every trainer is run in tests/test_new_trainers.py and the
    # gap closure is test_gap_closure's
    methods = ["source_only", "adami", "adami_batch_marginal"]
    cmd = [console_script("nnunet-sfda"), "benchmark", "--preset", "micro", "-o", str(out), "-device", "cpu",
           "--methods", ",".join(methods), "--every-epoch"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["preset"] == "micro" and results["shift"] == "default"
    assert list(results["methods"]) == [m for m in METHODS if m in methods]
    assert results["methods"] == results["shifts"]["default"]["methods"]
    for name, entry in results["methods"].items():
        assert isinstance(entry["dice"], float) and 0.0 <= entry["dice"] <= 1.0, (name, entry)
        assert set(entry["dice_per_class"]) == {"organ"}
    assert results["methods"]["source_only"]["seconds"] == 0
    adami_mode = results["methods"]["adami"]["prior_mode"]
    same = "adami_batch_marginal" if adami_mode == "batch_marginal" else "adami_per_sample"
    assert results["methods"][same]["same_run_as"] == "adami"
    assert "versions" in results and results["versions"]["nnunetv2"]
    environment = parse_environment((out / ENVIRONMENT_FILE_NAME).read_text())
    assert environment["nnunetv2"] == results["versions"]["nnunetv2"] and "torch" in environment
    for name in ("results.md", "results.csv", "figures/dice_by_method.png", "figures/curves_default.png",
                 "figures/examples_default.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == [m for m in METHODS if m in methods]
    # held-out test cases never enter an nnU-Net folder, so no method can train on them
    assert not any("test_" in p.name for p in (out / "nnUNet_raw").rglob("*.nii.gz"))

    # --every-epoch: the test Dice of each candidate of the choice; the chosen one's is the method's own Dice
    run = out / "runs" / "default" / "adami"
    candidates = read_result_file(CandidateDice, run / CANDIDATE_DICE_FILE_NAME, "candidate Dice", "rerun")
    epochs = preset_named("micro").adapt_epochs
    assert list(candidates.dice) == ["source", *map(str, range(epochs))]
    assert candidates.dice["source"] == pytest.approx(results["methods"]["source_only"]["dice"], abs=1e-3)
    chosen = records.load_history(run / records.HISTORY_FILE_NAME).choice.chosen
    assert candidates.dice[str(chosen)] == pytest.approx(results["methods"]["adami"]["dice"], abs=1e-3)
    assert not (out / "runs" / "default" / "source_only" / CANDIDATE_DICE_FILE_NAME).exists()

    # --resume finds everything done and reruns nothing
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ": training (" not in again.stdout and ": predicting " not in again.stdout  # the steps' progress lines
    assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]
    assert not list(out.glob("environment_resumed_*.txt"))  # the same environment: one list
