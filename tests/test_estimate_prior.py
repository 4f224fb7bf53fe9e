"""estimate-prior against a prepared target, the box-reporting loader and the trainer's use of per-slice priors."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import nnunet_env, run, worker_dataset_id
from nnunet_sfda.benchmark.commands import console_script
from nnunet_sfda.cli import main as sfda_main
from nnunet_sfda.prepared import case_geometries
from nnunet_sfda.priors import constant_prior, load_prior, prior_to_json

pytestmark = pytest.mark.slow

ADAPT_FAST = dict(nnUNet_n_proc_DA="0", nnUNet_sfda_num_epochs="1", nnUNet_sfda_iterations_per_epoch="2",
                  nnUNet_sfda_val_iterations="1", nnUNet_sfda_seed="0")
TABLE = """structure,population,default,volume_mean,volume_sd,volume_low,volume_high,unit,density_g_per_ml,reference,note
blob,adult,1,0.5,,0.25,1.0,mL,,test table,
blob,child,0,0.2,0.05,,,mL,,test table,
"""


@pytest.fixture(scope="session")  # once per worker, however pytest-xdist interleaves the modules
def prepared(source_model, worker_id):
    """A copy of the unlabelled target, prepared for 2d adaptation."""
    name = f"Dataset{worker_dataset_id(611, worker_id)}_PriorTarget"
    folder = source_model.root / "raw" / name
    shutil.copytree(source_model.target_raw, folder)
    env = nnunet_env(source_model.root)
    run(["nnunet-sfda", "prepare-target", "-m", str(source_model.model_folder), "-d", name, "-c", "2d", "-np", "1"],
        env)
    return name, env, source_model.root / "pre" / name


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([console_script("nnunet-sfda"), *args], env=env, capture_output=True, text=True,
                          timeout=300)


def cropped(image_file: Path) -> tuple[tuple[slice, ...], np.ndarray]:
    """nnU-Net's crop box (non-zero region of the image) computed independently, and the spacing (z, y, x)."""
    image = sitk.ReadImage(str(image_file))
    array = sitk.GetArrayFromImage(image)
    nz = np.nonzero(array != 0)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)
    return box, np.array(image.GetSpacing()[::-1])


def test_anatomy_prior_is_volume_over_field_of_view(prepared, source_model, tmp_path):
    name, env, pre = prepared
    table = tmp_path / "table.csv"
    table.write_text(TABLE)
    out = tmp_path / "anatomy.json"
    proc = run(["nnunet-sfda", "estimate-prior", "-d", name, "--anatomy", str(table), "--structure", "organ=blob",
                "-o", str(out)], env)
    assert "class-ratio prior" in proc.stdout and str(out) in proc.stdout
    prior = load_prior(out)
    assert prior.provenance.estimator == "anatomy" and prior.provenance.parameters["structures"] == {"organ": "blob"}
    for image_file in sorted((source_model.target_raw / "imagesTr").glob("*_0000.nii.gz")):
        case = image_file.name.replace("_0000.nii.gz", "")
        box, spacing = cropped(image_file)
        fov_ml = math.prod(s.stop - s.start for s in box) * spacing.prod() / 1000
        assert prior.per_case[case]["organ"] == pytest.approx(0.5 / fov_ml, rel=1e-9)
    assert prior.dataset_ratio["organ"] == pytest.approx(np.mean([c["organ"] for c in prior.per_case.values()]))
    assert prior.upper["organ"] == pytest.approx(max(c["organ"] for c in prior.per_case.values()) * 2)

    run(["nnunet-sfda", "estimate-prior", "-d", name, "--anatomy", str(table), "--structure", "organ=blob",
         "--population", "child", "-o", str(tmp_path / "child.json")], env)
    child = load_prior(tmp_path / "child.json")
    assert child.dataset_ratio["organ"] == pytest.approx(prior.dataset_ratio["organ"] * 0.4)


def test_true_size_prior_matches_the_cropped_labels(prepared, source_model, tmp_path):
    name, env, pre = prepared
    run(["nnunet-sfda", "estimate-prior", "-d", name, "--labels", str(source_model.target_labels), "--true-size"], env)
    prior = load_prior(pre / "sfda_prior_true_size.json")
    assert prior.kind == "true_size" and not (pre / "sfda_prior.json").exists()
    for label_file in sorted(source_model.target_labels.glob("*.nii.gz")):
        case = label_file.name.replace(".nii.gz", "")
        box, _ = cropped(source_model.target_raw / "imagesTr" / f"{case}_0000.nii.gz")
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))[box]
        assert prior.per_case[case]["organ"] == pytest.approx((labels == 1).mean())
        for i in range(labels.shape[0]):
            assert prior.per_slice[case][i]["organ"] == pytest.approx((labels[i] == 1).mean())


def write_tags(labels_dir: Path, out: Path) -> dict[str, list[int]]:
    present = {}
    lines = ["case,label,slices"]
    for label_file in sorted(labels_dir.glob("*.nii.gz")):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        slices = np.flatnonzero((array == 1).reshape(array.shape[0], -1).any(1)).tolist()
        case = label_file.name.replace(".nii.gz", "")
        present[case] = slices
        lines.append(f"{case},organ,{';'.join(map(str, slices))}")
    out.write_text("\n".join(lines) + "\n")
    return present


def test_tags_give_per_slice_priors_and_per_sample_training(prepared, source_model, tmp_path):
    name, env, pre = prepared
    table = tmp_path / "table.csv"
    table.write_text(TABLE)
    present = write_tags(source_model.target_labels, tmp_path / "tags.csv")
    run(["nnunet-sfda", "estimate-prior", "-d", name, "--anatomy", str(table), "--structure", "organ=blob",
         "--tags", str(tmp_path / "tags.csv"), "--overwrite"], env)
    prior = load_prior(pre / "sfda_prior.json")
    for case, slices in present.items():
        box, _ = cropped(source_model.target_raw / "imagesTr" / f"{case}_0000.nii.gz")
        frame = [i - box[0].start for i in slices]
        ratios = [prior.per_slice[case][i]["organ"] for i in range(len(prior.per_slice[case]))]
        assert [i for i, r in enumerate(ratios) if r > 0] == frame
        assert len(set(np.round([ratios[i] for i in frame], 12))) == 1  # spread evenly over tagged slices

    proc = run(["nnUNetv2_train", name, "2d", "all", "-tr", "nnUNetTrainerSFDA_AdaMI", "-device", "cpu"],
               {**env, **ADAPT_FAST})
    assert "mode per_sample" in proc.stdout
    assert "has no ratios for" not in proc.stdout


def test_training_warns_once_about_cases_missing_from_the_prior(prepared, tmp_path):
    name, env, pre = prepared
    table = tmp_path / "table.csv"
    table.write_text(TABLE)
    out = tmp_path / "partial.json"
    run(["nnunet-sfda", "estimate-prior", "-d", name, "--anatomy", str(table), "--structure", "organ=blob",
         "-o", str(out)], env)
    content = json.loads(out.read_text())
    dropped = sorted(content["per_case"])[0]
    del content["per_case"][dropped]
    out.write_text(json.dumps(content))
    proc = run(["nnUNetv2_train", name, "2d", "all", "-tr", "nnUNetTrainerSFDA_batchMarginal", "-device", "cpu"],
               {**env, **ADAPT_FAST, "nnUNet_sfda_prior": str(out)})
    assert proc.stdout.count("has no ratios for 1 of 4 training cases") == 1
    assert dropped in proc.stdout


def test_loader_reports_the_box_each_patch_came_from(prepared):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    from nnunet_sfda.trainers.loader import BoxReportingDataLoader

    _, _, pre = prepared
    dataset = nnUNetDatasetBlosc2(str(pre / "nnUNetPlans_2d"))
    labels = LabelManager({"background": 0, "organ": 1}, regions_class_order=None)
    loader = BoxReportingDataLoader(dataset, 5, (40, 40), (40, 40), labels)
    np.random.seed(0)
    batch = loader.generate_train_batch()
    assert len(batch["boxes"]) == len(batch["shapes"]) == 5
    for key, (lower, upper), shape, patch in zip(batch["keys"], batch["boxes"], batch["shapes"], batch["data"]):
        data = np.asarray(dataset.load_case(key)[0][:])
        assert list(data.shape[1:]) == shape
        assert upper[0] - lower[0] == 1 and [u - l for l, u in zip(lower[1:], upper[1:])] == [40, 40]
        expected = np.zeros((data.shape[0], 40, 40), dtype=np.float32)  # nnU-Net pads the image with 0
        src = [slice(max(lo, 0), min(hi, n)) for lo, hi, n in zip(lower[1:], upper[1:], shape[1:])]
        dst = [slice(s.start - lo, s.stop - lo) for s, lo in zip(src, lower[1:])]
        expected[(slice(None), *dst)] = data[(slice(None), lower[0], *src)]
        np.testing.assert_array_equal(patch.numpy(), expected)


@pytest.mark.parametrize("args, message", [
    (["--anatomy", "no_such_table", "--structure", "organ=x"], "unknown anatomy table 'no_such_table'; built-in"),
    (["--anatomy", "TABLE", "--structure", "organ=liver"], "unknown structure 'liver'; known structures: blob"),
    (["--anatomy", "TABLE", "--structure", "organ=blob", "--population", "elderly"],
     "has no row for population 'elderly'; available: adult, child"),
    (["--anatomy", "TABLE"], "no structure volume for label organ"),
    (["--anatomy", "TABLE", "--structure", "tumour=blob"], "no foreground label named 'tumour'"),
    (["--anatomy", "TABLE", "--structure", "organ"], "expected LABEL=STRUCTURE"),
    (["--ratios", "0.9", "0.1", "--structure", "organ=blob"], "--structure maps labels"),
    (["--ratios", "0.9", "0.1", "--anatomy", "TABLE"], "give exactly one of"),
    (["--labels", "LABELS", "--structure", "organ=blob"], "it needs --anatomy"),
    (["--anatomy", "TABLE", "--structure", "organ=blob", "--tags", "TAGS"], "case 'nobody' is not a target case"),
    (["--anatomy", "TABLE", "--structure", "organ=blob", "--tags", "missing.csv"], "tags file"),
    (["--ratios", "0.9", "0.1", "--tags", "TAGS"], "--tags has no effect with --ratios"),
])
def test_estimate_prior_errors(prepared, source_model, tmp_path, args, message):
    name, env, _ = prepared
    (tmp_path / "table.csv").write_text(TABLE)
    (tmp_path / "tags.csv").write_text("case,label,slices\nnobody,organ,1-2\n")
    args = [{"TABLE": str(tmp_path / "table.csv"), "TAGS": str(tmp_path / "tags.csv"),
             "LABELS": str(source_model.target_labels)}.get(a, a) for a in args]
    proc = cli(["estimate-prior", "-d", name, "-o", str(tmp_path / "p.json"), *args], env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "p.json").exists()


def test_estimate_prior_never_replaces_a_prior_without_overwrite(prepared, tmp_path):
    name, env, _ = prepared
    out = tmp_path / "p.json"
    run(["nnunet-sfda", "estimate-prior", "-d", name, "--ratios", "0.9", "0.1", "-o", str(out)], env)
    before = out.read_text()
    proc = cli(["estimate-prior", "-d", name, "--ratios", "0.8", "0.2", "-o", str(out)], env)
    assert proc.returncode == 2 and "already exists; pass --overwrite" in proc.stderr
    assert out.read_text() == before


def test_label_stats_table_feeds_estimate_prior(prepared, source_model, tmp_path):
    name, env, _ = prepared
    dataset_json = source_model.target_raw / "dataset.json"
    proc = run(["nnunet-sfda", "label-stats", str(source_model.target_labels), "--dataset-json", str(dataset_json),
                "-o", str(tmp_path / "stats.csv")], env)
    assert "organ: volume" in proc.stdout
    volumes = [(sitk.GetArrayFromImage(sitk.ReadImage(str(f))) == 1).sum() * np.prod(
        sitk.ReadImage(str(f)).GetSpacing()) / 1000 for f in sorted(source_model.target_labels.glob("*.nii.gz"))]
    run(["nnunet-sfda", "estimate-prior", "-d", name, "--anatomy", str(tmp_path / "stats.csv"), "--structure",
         "organ=organ", "-o", str(tmp_path / "from_table.json")], env)
    run(["nnunet-sfda", "estimate-prior", "-d", name, "--labels", str(source_model.target_labels),
         "-o", str(tmp_path / "from_labels.json")], env)
    a, b = load_prior(tmp_path / "from_table.json"), load_prior(tmp_path / "from_labels.json")
    assert a.provenance.parameters["volumes_ml"]["organ"] == pytest.approx(np.mean(volumes), rel=1e-5)
    for case in a.per_case:
        assert a.per_case[case]["organ"] == pytest.approx(b.per_case[case]["organ"], rel=1e-5)


def _prior_file(path: Path, **entries) -> Path:
    content = json.loads(prior_to_json(constant_prior(["background", "organ"], [0.9, 0.1])))
    path.write_text(json.dumps({**content, **entries}))
    return path


def test_install_checks_the_prior_against_the_prepared_cases(prepared, tmp_path, monkeypatch, capsys):
    name, env, pre = prepared
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    installed = pre / "sfda_prior.json"
    before = installed.read_text() if installed.exists() else None
    geometry = case_geometries(pre)[0]
    ratio = {"background": 0.9, "organ": 0.1}
    outside = _prior_file(tmp_path / "outside.json", per_slice={geometry.case: {"999": ratio}})
    assert sfda_main(["estimate-prior", "-d", name, "--install", str(outside), "--overwrite"]) == 2
    err = capsys.readouterr().err
    last = geometry.shape[0] - 1
    assert f"per_slice.{geometry.case} names slice 999, but the prepared case has slices 0-{last}" in err
    assert (installed.read_text() if installed.exists() else None) == before  # nothing installed

    elsewhere = _prior_file(tmp_path / "elsewhere.json", per_case={"other_site_001": ratio})
    assert sfda_main(["estimate-prior", "-d", name, "--install", str(elsewhere), "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "name none of the target's" in captured.err
    assert f"Installed {elsewhere} as {installed}" in captured.out
    assert load_prior(installed).per_case == {"other_site_001": ratio}


def test_a_folder_as_output_or_install_file_is_one_clear_error(prepared, tmp_path, monkeypatch, capsys):
    name, env, pre = prepared
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, env[key])
    for extra in ([], ["--overwrite"]):
        assert sfda_main(["estimate-prior", "-d", name, "--ratios", "0.9", "0.1", "-o", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"-o {tmp_path}: is a folder; give a file path" in err
    assert sfda_main(["estimate-prior", "-d", name, "--install", str(tmp_path), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--install {tmp_path}: is a folder; give the prior file" in err
