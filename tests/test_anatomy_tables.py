"""Tests for nnunet_sfda.priors.anatomy: CSV anatomy tables, units, ranges, row selection and error messages."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from nnunet_sfda.priors import PriorError, anatomy
from nnunet_sfda.priors.anatomy import (
    TABLE_COLUMNS,
    AnatomyTable,
    StructureVolume,
    builtin_table_ids,
    load_table,
    parse_table,
    select_volumes,
)

HEADER = ("structure,population,default,volume_mean,volume_sd,volume_low,volume_high,unit,density_g_per_ml,"
          "reference,note")


def _csv(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


# liver: adult (default, litres, low/high) and child (mL, sd); spleen: mass in g; kidney: mm3; heart: cm3 with sd.
VALID = _csv(
    "liver,adult,1,1.5,,1.2,1.8,L,,Ref A,typical adult liver",
    "liver,child,0,800,100,,,mL,,Ref B,",
    "spleen,adult,1,105,5,,,g,1.05,Ref C,",
    "kidney,adult,1,150000,,100000,200000,mm3,,Ref D,",
    "heart,adult,1,600,200,,,cm3,,Ref E,",
)


def _errors(text: str, pattern: str, source: str = "my_table.csv") -> PriorError:
    with pytest.raises(PriorError, match=pattern) as info:
        parse_table(text, source)
    return info.value


# ------------------------------------------------------------------------------------------------ valid tables


def test_valid_table_parses():
    table = parse_table(VALID, "my_table.csv")
    assert isinstance(table, AnatomyTable)
    assert table.source == "my_table.csv"
    assert len(table.rows) == 5
    assert table.structures == ["heart", "kidney", "liver", "spleen"]
    assert table.populations("liver") == ["adult", "child"]
    assert table.populations() == ["adult", "child"]
    assert table.default_population("liver") == "adult"
    row = table.row("liver")
    assert row.population == "adult"
    assert row.default is True
    assert row.unit == "L"
    assert row.volume_mean == 1.5
    assert row.volume_sd is None
    assert row.reference == "Ref A"
    assert row.note == "typical adult liver"
    child = table.row("liver", "child")
    assert child.default is False
    assert child.volume_sd == 100.0
    assert child.note == ""


def test_whitespace_around_cells_and_header_is_ignored():
    text = (" structure , population,default ,volume_mean,volume_sd,unit,reference\n"
            " liver , adult , 1 , 1500 , 100 , mL , Ref A \n")
    row = parse_table(text, "t").row("liver")
    assert (row.structure, row.population, row.default, row.volume_mean, row.unit, row.reference) == (
        "liver", "adult", True, 1500.0, "mL", "Ref A")


@pytest.mark.parametrize(
    "unit, mean, low, high, expected",
    [
        ("mL", 250, 200, 300, (250.0, 200.0, 300.0)),
        ("cm3", 250, 200, 300, (250.0, 200.0, 300.0)),
        ("L", 1.5, 1.2, 1.8, (1500.0, 1200.0, 1800.0)),
        ("mm3", 150000, 100000, 200000, (150.0, 100.0, 200.0)),
    ],
)
def test_volume_units_convert_to_ml(unit, mean, low, high, expected):
    table = parse_table(_csv(f"organ,adult,1,{mean},,{low},{high},{unit},,Ref,"), "t")
    vol = table.row("organ").volume_ml()
    assert isinstance(vol, StructureVolume)
    assert (vol.mean_ml, vol.low_ml, vol.high_ml) == pytest.approx(expected, rel=1e-12)
    assert vol.what == "organ (adult)"


def test_mass_unit_with_density_gives_volume():
    # 105 g at 1.05 g/mL = 100 mL; sd 5 g -> range 95..115 g = 90.476..109.524 mL
    vol = parse_table(VALID, "t").row("spleen").volume_ml()
    assert vol.mean_ml == pytest.approx(100.0, rel=1e-12)
    assert vol.low_ml == pytest.approx(95.0 / 1.05, rel=1e-12)
    assert vol.high_ml == pytest.approx(115.0 / 1.05, rel=1e-12)


def test_kilogram_unit_with_density():
    # 1.4 kg at 1.04 g/mL = 1400 g / 1.04 = 1346.15 mL
    vol = parse_table(_csv("brain,adult,1,1.4,,1.3,1.5,kg,1.04,Ref,"), "t").row("brain").volume_ml()
    assert vol.mean_ml == pytest.approx(1400.0 / 1.04, rel=1e-12)
    assert vol.low_ml == pytest.approx(1300.0 / 1.04, rel=1e-12)
    assert vol.high_ml == pytest.approx(1500.0 / 1.04, rel=1e-12)


def test_range_from_low_high():
    vol = parse_table(VALID, "t").row("liver").volume_ml()
    assert (vol.mean_ml, vol.low_ml, vol.high_ml) == pytest.approx((1500.0, 1200.0, 1800.0))


def test_range_from_mean_plus_minus_two_sd():
    table = parse_table(VALID, "t")
    child = table.row("liver", "child").volume_ml()  # 800 ± 2*100
    assert (child.mean_ml, child.low_ml, child.high_ml) == pytest.approx((800.0, 600.0, 1000.0))
    heart = table.row("heart").volume_ml()  # 600 ± 2*200 cm3
    assert (heart.mean_ml, heart.low_ml, heart.high_ml) == pytest.approx((600.0, 200.0, 1000.0))


def test_range_from_sd_is_clamped_at_zero():
    # 10 - 2*8 = -6 -> 0; 10 + 16 = 26
    vol = parse_table(_csv("gland,adult,1,10,8,,,mL,,Ref,"), "t").row("gland").volume_ml()
    assert vol.low_ml == 0.0
    assert vol.high_ml == pytest.approx(26.0)


def test_low_high_take_precedence_over_sd():
    # sd would give 80..120; the explicit range 50..150 wins
    vol = parse_table(_csv("lung,adult,1,100,10,50,150,mL,,Ref,"), "t").row("lung").volume_ml()
    assert (vol.low_ml, vol.high_ml) == pytest.approx((50.0, 150.0))


def test_default_row_selection():
    table = parse_table(VALID, "t")
    volumes = select_volumes(table, {"organ": "liver", "spleen_label": "spleen"})
    assert set(volumes) == {"organ", "spleen_label"}
    assert volumes["organ"].mean_ml == pytest.approx(1500.0)  # liver, adult (default)
    assert volumes["organ"].what == "liver (adult)"
    assert volumes["spleen_label"].mean_ml == pytest.approx(100.0)


def test_anatomy_prior_states_the_rows_range_as_plausible_volume():
    from nnunet_sfda.priors.geometry import CaseGeometry
    from nnunet_sfda.priors.structure_volumes import volume_prior

    table = parse_table(VALID, "t")
    case = CaseGeometry("c", (10, 10, 10), (20.0, 20.0, 20.0), (0, 0, 0), (0, 1, 2), (10, 10, 10))  # 8000 mL
    labels = ["background", "organ", "spleen_label"]
    volumes = select_volumes(table, {"organ": "liver", "spleen_label": "spleen"})
    adult = volume_prior(labels, [case], volumes)
    # liver adult: low/high columns 1.2..1.8 L; spleen: 105 g ± 2 * 5 g at 1.05 g/mL
    spleen = (95 / 1.05, 115 / 1.05)
    assert adult.plausible_volume_ml == {"organ": pytest.approx((1200.0, 1800.0)),
                                         "spleen_label": pytest.approx(spleen)}
    assert adult.per_case_bounds["c"]["organ"] == pytest.approx((0.15, 0.225))
    assert adult.per_case_bounds["c"]["background"] == pytest.approx(
        (1 - 0.225 - spleen[1] / 8000, 1 - 0.15 - spleen[0] / 8000))
    child = volume_prior(labels, [case], {**volumes, **select_volumes(table, {"organ": "liver"}, population="child")})
    assert child.plausible_volume_ml["organ"] == pytest.approx((600.0, 1000.0))  # 800 mL ± 2 * 100 mL


def test_population_selection():
    table = parse_table(VALID, "t")
    volumes = select_volumes(table, {"organ": "liver"}, population="child")
    assert volumes["organ"].mean_ml == pytest.approx(800.0)
    assert volumes["organ"].what == "liver (child)"
    assert table.row("liver", "adult").volume_mean == 1.5


def test_population_missing_for_one_mapped_structure():
    table = parse_table(VALID, "t")
    with pytest.raises(PriorError, match=r"structure 'spleen' has no row for population 'child'; available: adult"):
        select_volumes(table, {"organ": "liver", "other": "spleen"}, population="child")


# ------------------------------------------------------------------------------------------------ errors


def test_missing_required_column_lists_expected_columns():
    header = "structure,population,default,volume_sd,unit,reference"
    err = _errors(_csv("liver,adult,1,100,mL,Ref", header=header), r"missing column volume_mean;")
    assert "my_table.csv" in str(err)
    assert "expected columns: " + ", ".join(TABLE_COLUMNS) in str(err)


def test_missing_several_columns():
    _errors(_csv("liver,adult,100", header="structure,population,volume_mean"),
            r"missing columns default, unit, reference; expected columns: structure, population")


def test_unknown_column():
    _errors(_csv("liver,adult,1,100,10,mL,Ref,red", header="structure,population,default,volume_mean,volume_sd,"
                 "unit,reference,colour"), r"unknown column colour; expected columns: structure, population")


@pytest.mark.parametrize("value", ["-5", "0"])
def test_nonpositive_volume_names_line_and_column(value):
    text = _csv("liver,adult,1,100,10,,,mL,,Ref,", f"spleen,adult,1,{value},10,,,mL,,Ref,")
    err = _errors(text, r"line 3, column volume_mean: .*greater than 0")
    assert f"(got '{value}')" in str(err)
    assert "invalid anatomy table my_table.csv" in str(err)
    assert "line 2" not in str(err)


def test_negative_sd_is_an_error():
    _errors(_csv("liver,adult,1,100,-1,,,mL,,Ref,"), r"line 2, column volume_sd: .*greater than or equal to 0")


def test_unknown_unit():
    _errors(_csv("liver,adult,1,100,10,,,ml,,Ref,"), r"line 2, column unit: .*\(got 'ml'\)")


def test_mass_unit_without_density():
    _errors(_csv("liver,adult,1,1800,100,,,g,,Ref,"),
            r"line 2: unit 'g' is a mass: density_g_per_ml is required")


def test_volume_unit_with_density():
    _errors(_csv("liver,adult,1,1800,100,,,mL,1.06,Ref,"),
            r"line 2: unit 'mL' is a volume: leave density_g_per_ml empty")


def test_neither_sd_nor_low_high():
    _errors(_csv("liver,adult,1,1800,,,,mL,,Ref,"), r"line 2: give the spread: volume_sd, or both volume_low")


def test_only_low_without_sd():
    _errors(_csv("liver,adult,1,1800,,1000,,mL,,Ref,"), r"line 2: give the spread")


def test_low_without_high_with_sd():
    _errors(_csv("liver,adult,1,1800,100,1000,,mL,,Ref,"), r"line 2: volume_low and volume_high go together")


def test_low_above_mean():
    _errors(_csv("liver,adult,1,100,,120,150,mL,,Ref,"),
            r"line 2: expected volume_low <= volume_mean <= volume_high, got 120 <= 100 <= 150")


def test_high_below_mean():
    _errors(_csv("liver,adult,1,100,,50,90,mL,,Ref,"),
            r"line 2: expected volume_low <= volume_mean <= volume_high, got 50 <= 100 <= 90")


def test_duplicate_structure_population():
    text = _csv("liver,adult,1,100,10,,,mL,,Ref,", "liver,adult,0,110,10,,,mL,,Ref,")
    _errors(text, r"line 3: duplicate row for structure 'liver', population 'adult' \(first on line 2\)")


def test_no_default_row_for_a_structure():
    text = _csv("liver,adult,0,100,10,,,mL,,Ref,", "liver,child,0,50,10,,,mL,,Ref,", "heart,adult,1,600,100,,,mL,,R,")
    err = _errors(text, r"structure 'liver': expected exactly one row with default 1, got 0")
    assert "heart" not in str(err)


def test_two_default_rows_for_a_structure():
    text = _csv("liver,adult,1,100,10,,,mL,,Ref,", "liver,child,1,50,10,,,mL,,Ref,")
    _errors(text, r"structure 'liver': expected exactly one row with default 1, got 2 \(adult, child\)")


@pytest.mark.parametrize("value, shown", [("yes", "'yes'"), ("2", "'2'"), ("", "None")])
def test_default_must_be_0_or_1(value, shown):
    _errors(_csv(f"liver,adult,{value},100,10,,,mL,,Ref,"),
            rf"line 2, column default: expected 0 or 1, got {re.escape(shown)}")


def test_structure_id_must_be_snake_case():
    _errors(_csv("Liver,adult,1,100,10,,,mL,,Ref,"), r"line 2, column structure: .*\(got 'Liver'\)")


def test_missing_reference_is_an_error():
    _errors(_csv("liver,adult,1,100,10,,,mL,,,"), r"line 2, column reference:")


def test_more_cells_than_columns():
    _errors(_csv("liver,adult,1,100,10,,,mL,,Ref,,extra"), r"line 2: more cells than columns")


def test_table_without_rows():
    _errors(_csv(), r"invalid anatomy table my_table.csv:\n  - no rows")


def test_several_problems_are_reported_together():
    text = _csv("liver,adult,1,-1,10,,,mL,,Ref,", "heart,adult,1,600,100,,,g,,Ref,")
    err = _errors(text, r"line 2, column volume_mean")
    assert "line 3: unit 'g' is a mass" in str(err)


def test_line_numbers_count_blank_lines():
    text = _csv("liver,adult,1,100,10,,,mL,,Ref,", "", "heart,adult,1,-5,10,,,mL,,Ref,")  # bad row: line 4
    _errors(text, r"line 4, column volume_mean")


def test_unknown_structure_lists_known_structures():
    table = parse_table(VALID, "my_table.csv")
    with pytest.raises(PriorError, match=r"anatomy table my_table.csv: unknown structure 'lung'; known structures: "
                                         r"heart, kidney, liver, spleen"):
        table.row("lung")


def test_unknown_population_lists_available():
    table = parse_table(VALID, "t")
    with pytest.raises(PriorError, match=r"structure 'liver' has no row for population 'elderly'; "
                                         r"available: adult, child"):
        table.row("liver", "elderly")


# ------------------------------------------------------------------------------------------------ load_table


def test_load_table_from_path(tmp_path: Path):
    path = tmp_path / "organs.csv"
    path.write_text(VALID, encoding="utf-8")
    table = load_table(path)
    assert table.source == str(path)
    assert table.row("liver").volume_ml().mean_ml == pytest.approx(1500.0)
    assert load_table(str(path)).rows == table.rows


def test_load_table_from_path_with_bom(tmp_path: Path):
    path = tmp_path / "excel.csv"
    path.write_text(VALID, encoding="utf-8-sig")  # what spreadsheet programs write
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_table(path).structures == ["heart", "kidney", "liver", "spleen"]


def test_load_table_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"anatomy table file .*nope\.csv not found"):
        load_table(tmp_path / "nope.csv")


def test_load_table_invalid_file_names_the_path(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text(_csv("liver,adult,1,100,10,,,litre,,Ref,"), encoding="utf-8")
    with pytest.raises(PriorError, match=rf"invalid anatomy table {re.escape(str(path))}:\n  - line 2, column unit"):
        load_table(path)


def test_builtin_tables_from_package_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "mini.csv").write_text(VALID, encoding="utf-8")
    (tmp_path / "readme.txt").write_text("not a table", encoding="utf-8")
    monkeypatch.setattr(anatomy, "_tables_dir", lambda: tmp_path)
    assert builtin_table_ids() == ["mini"]
    table = load_table("mini")
    assert table.source == "mini"
    assert table.row("liver", "child").volume_ml().mean_ml == pytest.approx(800.0)
    with pytest.raises(PriorError, match=r"unknown anatomy table 'maxi'; built-in tables: mini \(or give the path"):
        load_table("maxi")


def test_unknown_builtin_id_lists_builtin_ids():
    ids = builtin_table_ids()
    if not ids:
        pytest.skip("no built-in tables yet")
    with pytest.raises(PriorError, match=r"unknown anatomy table 'no_such_table'; built-in tables: "
                                         + re.escape(", ".join(ids))):
        load_table("no_such_table")


def _builtin_ids() -> list[str]:
    try:
        return builtin_table_ids()
    except FileNotFoundError:  # the tables folder is being written concurrently
        return []


@pytest.mark.parametrize("table_id", _builtin_ids() or ["<none>"])
def test_builtin_table_loads(table_id):
    if table_id == "<none>":
        pytest.skip("no built-in tables yet")
    table = load_table(table_id)
    assert table.source == table_id
    assert table.structures
    for structure in table.structures:
        vol = table.row(structure).volume_ml()
        assert math.isfinite(vol.mean_ml) and vol.mean_ml > 0, (structure, vol)
        assert 0 <= vol.low_ml <= vol.mean_ml <= vol.high_ml, (structure, vol)
        for population in table.populations(structure):
            assert table.row(structure, population).volume_ml().mean_ml > 0
