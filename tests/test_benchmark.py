"""``nnunet-sfda benchmark`` and ``demo``: argument checks, gap closure, which output folders they may replace, and a
smoke run of the whole benchmark on the micro preset."""
from __future__ import annotations

import csv
import json
import subprocess

import pytest

from nnunet_sfda.benchmark.commands import console_script, nnunet_env
from nnunet_sfda.benchmark.demo import run_demo
from nnunet_sfda.benchmark.methods import METHODS, parse_methods
from nnunet_sfda.benchmark.output_folder import MARKER_FILE_NAME, claim_output_folder
from nnunet_sfda.benchmark.runner import add_gap_closure, run_benchmark


def test_parse_methods_keeps_canonical_order_and_names_unknown_ones():
    assert parse_methods(None) == list(METHODS)
    assert parse_methods("oracle, adami,source_only") == ["source_only", "adami", "oracle"]
    with pytest.raises(ValueError, match="unknown method adami_v2; known: source_only, entropy_only, tent"):
        parse_methods("adami,adami_v2")


def test_gap_closure():
    methods = {"source_only": {"dice": 0.6}, "adami": {"dice": 0.75}, "tent": {"dice": 0.5},
               "broken": {"dice": None}, "oracle": {"dice": 0.8}}
    add_gap_closure(methods)
    assert methods["adami"]["gap_closure"] == pytest.approx(0.75)
    assert methods["tent"]["gap_closure"] == pytest.approx(-0.5)
    assert methods["source_only"]["gap_closure"] == 0 and methods["oracle"]["gap_closure"] == 1
    assert methods["broken"]["gap_closure"] is None
    tiny_gap = {"source_only": {"dice": 0.795}, "adami": {"dice": 0.8}, "oracle": {"dice": 0.8}}
    add_gap_closure(tiny_gap)
    assert all(m["gap_closure"] is None for m in tiny_gap.values())
    no_oracle = {"source_only": {"dice": 0.6}, "adami": {"dice": 0.7}}
    add_gap_closure(no_oracle)
    assert no_oracle["adami"]["gap_closure"] is None


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
    (legacy / MARKER_FILE_NAME).write_text('{"made_by": "someone else"}')
    with pytest.raises(ValueError, match="not a valid nnunet-sfda output marker"):
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
    ({"preset": "huge"}, "unknown preset 'huge'; known: micro, quick, full"),
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
    cmd = [console_script("nnunet-sfda"), "benchmark", "--preset", "micro", "-o", str(out), "-device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["preset"] == "micro" and results["shift"] == "default"
    assert list(results["methods"]) == list(METHODS)
    assert results["methods"] == results["shifts"]["default"]["methods"]
    for name, entry in results["methods"].items():
        assert isinstance(entry["dice"], float) and 0.0 <= entry["dice"] <= 1.0, (name, entry)
        assert set(entry["dice_per_class"]) == {"organ"}
    assert results["methods"]["source_only"]["seconds"] == 0
    adami_mode = results["methods"]["adami"]["prior_mode"]
    same = "adami_batch_marginal" if adami_mode == "batch_marginal" else "adami_per_sample"
    assert results["methods"][same]["same_run_as"] == "adami"
    assert "versions" in results and results["versions"]["nnunetv2"]
    for name in ("results.md", "results.csv", "figures/dice_by_method.png", "figures/curves_default.png",
                 "figures/examples_default.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["method"] for r in rows] == list(METHODS)
    # held-out test cases never enter an nnU-Net folder, so no method can train on them
    assert not any("test_" in p.name for p in (out / "nnUNet_raw").rglob("*.nii.gz"))

    # --resume finds everything done and reruns nothing
    again = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "training" not in again.stdout and "predicting" not in again.stdout
    assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]
