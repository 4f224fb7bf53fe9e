"""``environment.txt``: the installed distributions a demo, benchmark or sweep made its numbers with."""
from __future__ import annotations

from importlib import metadata

from nnunet_sfda.environment import (
    ENVIRONMENT_FILE_NAME,
    environment_differences,
    environment_text,
    key_versions,
    parse_environment,
    record_environment,
)


def test_the_list_holds_every_distribution_with_its_installed_version():
    listed = parse_environment(environment_text())
    assert listed["nnunetv2"] == metadata.version("nnunetv2")
    assert listed["torch"] == metadata.version("torch")
    assert listed["nnunet-sfda"] == metadata.version("nnunet-sfda")
    assert list(listed) == sorted(listed)
    assert key_versions()["nnunetv2"] == listed["nnunetv2"]


def test_parse_skips_comments_and_canonicalises_names():
    text = "# python 3.11.7\nAcvl_Utils==0.2.6\nnot a pin\ntorch == 2.1.0\n"
    assert parse_environment(text) == {"acvl-utils": "0.2.6", "torch": "2.1.0"}


def test_differences_name_changed_added_and_removed_distributions():
    before = {"numpy": "1.26.4", "scipy": "1.13.0", "torch": "2.1.0"}
    after = {"numpy": "2.1.0", "torch": "2.1.0", "monai": "1.4.0"}
    assert environment_differences(before, after) == ["monai (absent) -> 1.4.0", "numpy 1.26.4 -> 2.1.0",
                                                      "scipy 1.13.0 -> (absent)"]
    assert environment_differences(after, after) == []


def test_a_resume_in_another_environment_keeps_the_first_list_and_says_what_changed(tmp_path):
    first, changed = record_environment(tmp_path)
    assert first == tmp_path / ENVIRONMENT_FILE_NAME and changed == []
    assert record_environment(tmp_path) == (first, [])  # the same environment: nothing new
    assert [p.name for p in tmp_path.iterdir()] == [ENVIRONMENT_FILE_NAME]

    started_in = first.read_text().replace(f"nnunetv2=={metadata.version('nnunetv2')}", "nnunetv2==2.2.1")
    first.write_text(started_in)
    second, changed = record_environment(tmp_path)
    assert second.name == "environment_resumed_1.txt"
    assert changed == [f"nnunetv2 2.2.1 -> {metadata.version('nnunetv2')}"]
    assert first.read_text() == started_in  # the environment the run started in is kept
    assert record_environment(tmp_path) == (second, changed)  # resumed again in the same one: nothing new

    second.write_text(second.read_text().replace("nnunetv2==", "nnunetv2==0"))
    assert record_environment(tmp_path)[0].name == "environment_resumed_2.txt"
