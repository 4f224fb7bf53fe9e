"""Writing a report folder: ``sfda_report.csv`` (one row per case), ``sfda_report.md`` (counts and the table),
``sfda_report.png`` (a few flagged cases' slices) and ``sfda_report.json`` (:mod:`nnunet_sfda.qc.report_file`).

Everything is written into a temporary folder beside the destination, which is renamed into place at the end
(:func:`staged_output_folder`, the shared rule of :mod:`nnunet_sfda.output_folder`): an interrupted report leaves no
half-written table, and an earlier report is only replaced once the new one is complete. Text files go through
:mod:`nnunet_sfda.files`.
"""
from __future__ import annotations

import csv
import io
import math
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_sfda import output_folder
from nnunet_sfda.files import atomic_write_json, atomic_write_text
from nnunet_sfda.qc.report_file import REPORT_FILE_NAME, QCReport

CSV_FILE_NAME = "sfda_report.csv"
MARKDOWN_FILE_NAME = "sfda_report.md"
FIGURE_FILE_NAME = "sfda_report.png"
#: how many cases the figure shows
FIGURE_CASES = 4


# ------------------------------------------------------------------------------------------------- output folder
def check_output_folder(folder: Path, overwrite: bool, forbidden: Mapping[str, Path]) -> None:
    """Refuse an output folder that lies inside (or holds) one of ``forbidden`` (what -> folder: models, raw
    images, labels), then apply the output-folder rule of :mod:`nnunet_sfda.output_folder` (kind ``report``; a
    folder of an earlier version is recognised by its ``sfda_report.json``)."""
    resolved = folder.resolve()
    for what, root in forbidden.items():
        root = root.resolve()
        if resolved == root or root in resolved.parents or resolved in root.parents:
            relation = "lies inside" if resolved == root or root in resolved.parents else "holds"
            raise ValueError(f"-o {folder} {relation} {what} {root}; the report never writes there: choose another -o")
    output_folder.check_output_folder(folder, "report", overwrite=overwrite, legacy_file=REPORT_FILE_NAME)


@contextmanager
def staged_output_folder(folder: Path, overwrite: bool, forbidden: Mapping[str, Path]) -> Iterator[Path]:
    """:func:`check_output_folder`, then :func:`nnunet_sfda.output_folder.staged_output_folder`: a temporary folder
    beside ``folder`` to write into, swapped in only when the block ends without error."""
    check_output_folder(folder, overwrite, forbidden)
    with output_folder.staged_output_folder(folder, "report", overwrite=overwrite,
                                            legacy_file=REPORT_FILE_NAME) as staging:
        yield staging


# ------------------------------------------------------------------------------------------------------- tables
def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return ""
    return "inf" if math.isinf(value) else f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"


def csv_rows(report: QCReport) -> list[dict[str, str]]:
    """The CSV's rows (column -> text); per class: source/adapted mL, plausible low/high mL, agreement Dice and,
    with labels, the Dice of each model."""
    with_labels = report.labels is not None
    rows = []
    for case in report.cases:
        row = {"case": case.case, "recommendation": case.recommendation,
               "agreement_dice": f"{case.agreement_dice:.4f}",
               "flip_agreement_source": f"{case.flip_agreement_source:.4f}",
               "flip_agreement_adapted": f"{case.flip_agreement_adapted:.4f}"}
        for name, c in case.classes.items():
            low, high = c.plausible_ml if c.plausible_ml is not None else (None, None)
            row |= {f"{name}_source_ml": f"{c.source_ml:.4f}", f"{name}_adapted_ml": f"{c.adapted_ml:.4f}",
                    f"{name}_plausible_low_ml": "" if low is None else f"{low:.4f}",
                    f"{name}_plausible_high_ml": "" if high is None else f"{high:.4f}",
                    f"{name}_agreement_dice": f"{c.agreement_dice:.4f}"}
            if with_labels:
                row |= {f"{name}_dice_source": f"{c.dice_source:.4f}", f"{name}_dice_adapted": f"{c.dice_adapted:.4f}"}
        row["flags"] = "; ".join(case.flags)
        rows.append(row)
    return rows


def csv_text(report: QCReport) -> str:
    rows = csv_rows(report)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def markdown_text(report: QCReport, figure: str | None) -> str:
    counts = report.counts()
    names = list(report.cases[0].classes)
    with_labels = report.labels is not None
    lines = [
        f"# nnunet-sfda report: {report.dataset}, {report.trainer} ({report.configuration})", "",
        f"- source model: `{report.source_checkpoint}`", f"- adapted model: `{report.adapted_checkpoint}`",
        f"- scans: `{report.images}` ({len(report.cases)} cases)",
        f"- plausible ranges: {'from `' + report.prior + '`' if report.prior else 'none (no prior found)'}",
        f"- labels: {'`' + report.labels + '` (Dice columns)' if with_labels else 'none (label-free)'}", "",
        "Recommendations: " + ", ".join(f"**{n}** {r}" for r, n in counts.items()), "",
        "Rule, thresholds and what each column means: docs/report.md. Agreement: Dice between the source and the "
        "adapted prediction. Flip agreement: Dice between a model's prediction and its prediction on the flipped "
        "scan, flipped back.", "",
    ]
    header = ["case", "recommendation", "agreement", "flip agr. source / adapted"]
    header += [f"{n} mL source → adapted [plausible]" for n in names]
    header += [f"{n} Dice source → adapted" for n in names] if with_labels else []
    header += ["flags"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in report.cases:
        cells = [case.case, case.recommendation, f"{case.agreement_dice:.2f}",
                 f"{case.flip_agreement_source:.2f} / {case.flip_agreement_adapted:.2f}"]
        for c in case.classes.values():
            rng = "" if c.plausible_ml is None else f" [{_number(c.plausible_ml[0])}, {_number(c.plausible_ml[1])}]"
            cells.append(f"{_number(c.source_ml)} → {_number(c.adapted_ml)}{rng}")
        if with_labels:
            cells += [f"{c.dice_source:.2f} → {c.dice_adapted:.2f}" for c in case.classes.values()]
        cells.append("; ".join(case.flags).replace("|", "/") or "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"![flagged cases]({figure})" if figure else "No case is flagged: no figure."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------- figure
@dataclass(frozen=True)
class CaseSlices:
    """One slice (raw axis 0) of a case: the image's first channel and the label maps drawn over it."""

    case: str
    index: int
    image: np.ndarray
    source: np.ndarray
    adapted: np.ndarray
    labels: np.ndarray | None


def middle_slice(source: np.ndarray, adapted: np.ndarray) -> int:
    """Index along raw axis 0 of the middle of the predicted foreground (either model), else of the volume."""
    foreground = np.flatnonzero(((source > 0) | (adapted > 0)).reshape(source.shape[0], -1).any(1))
    return int((foreground[0] + foreground[-1]) // 2) if foreground.size else source.shape[0] // 2


def figure_cases(report: QCReport, limit: int = FIGURE_CASES) -> list[str]:
    """The cases the figure shows: those recommended source or review first, then other flagged ones; none when
    nothing is flagged."""
    ranked = sorted((c for c in report.cases if c.flags or c.recommendation != "adapted"),
                    key=lambda c: (c.recommendation == "adapted", c.agreement_dice))
    return [c.case for c in ranked[:limit]]


def draw_figure(report: QCReport, slices: Sequence[CaseSlices]):
    """Rows: cases; columns: image, source and adapted overlays (and labels, when given). Caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {c.case: c for c in report.cases}
    columns = ["image", "source", "adapted"] + (["labels"] if any(s.labels is not None for s in slices) else [])
    with plt.style.context("default"):
        fig, axes = plt.subplots(len(slices), len(columns), figsize=(3 * len(columns), 3.6 * len(slices)),
                                 squeeze=False)
        for row_axes, s in zip(axes, slices):
            case = rows[s.case]
            for ax, column in zip(row_axes, columns):
                ax.imshow(s.image, cmap="gray")
                overlay = {"source": s.source, "adapted": s.adapted, "labels": s.labels}.get(column)
                if overlay is not None:
                    ax.imshow(np.ma.masked_equal(overlay, 0), cmap="tab10", vmin=0, vmax=9, alpha=0.5,
                              interpolation="nearest")
                ax.set_axis_off()
                ax.set_title(f"{s.case} z={s.index}" if column == "image" else column, fontsize=9)
            # wrapped to the panel's width and left out of the layout: a long flag must not squeeze the panels
            caption = textwrap.fill(f"→ {case.recommendation}: {case.flags[0] if case.flags else 'no flags'}",
                                    width=48)
            row_axes[0].text(0, -0.03, caption, transform=row_axes[0].transAxes, fontsize=8,
                             va="top").set_in_layout(False)
        fig.tight_layout(h_pad=3.0)  # room for the captions under each row
    return fig


def write_report(folder: Path, report: QCReport, slices: Sequence[CaseSlices]) -> list[Path]:
    """Write the report's files into ``folder`` (the staging folder); returns their paths."""
    written = [atomic_write_text(folder / CSV_FILE_NAME, csv_text(report))]
    figure = None
    if slices:
        import matplotlib.pyplot as plt

        fig = draw_figure(report, slices)
        try:
            fig.savefig(folder / FIGURE_FILE_NAME, dpi=100)  # inside the staging folder, which is renamed whole
        finally:
            plt.close(fig)
        figure = FIGURE_FILE_NAME
        written.append(folder / FIGURE_FILE_NAME)
    written.append(atomic_write_text(folder / MARKDOWN_FILE_NAME, markdown_text(report, figure)))
    # python mode: an infinite plausible bound stays Infinity (pydantic's json mode would write null)
    written.append(atomic_write_json(folder / REPORT_FILE_NAME, report.model_dump()))
    return written
