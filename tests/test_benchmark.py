"""``nnunet-sfda benchmark``: argument checks, gap closure, and a smoke run of the whole pipeline on the micro preset."""
from __future__ import annotations

import csv
import json
import os
import subprocess

import pytest

from nnunet_sfda.benchmark.commands import console_script
from nnunet_sfda.benchmark.runner import METHODS, add_gap_closure, parse_methods, run_benchmark


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


def test_refuses_a_non_empty_folder_without_resume_or_overwrite(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="exists and is not empty; pass --resume"):
        run_benchmark(tmp_path, preset="micro")
    with pytest.raises(FileExistsError, match="not a benchmark folder"):
        run_benchmark(tmp_path, preset="micro", resume=True)
    with pytest.raises(ValueError, match="not both"):
        run_benchmark(tmp_path, preset="micro", resume=True, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    env.update(nnUNet_def_n_proc="1", nnUNet_n_proc_DA="0", nnUNet_compile="f")
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
