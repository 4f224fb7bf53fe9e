"""Label-free measures of one case, the flags they raise and the recommendation rule: pure numpy, no nnU-Net.

Inputs are the label maps that the source and the adapted model predict for one case (and, for the score, their
predictions on the case flipped along one in-plane axis, mapped back). Everything here is measured without labels:

- **volume** of each foreground class in mL: voxel count × voxel volume (from the image spacing);
- **plausible range** of that volume in mL, where the prior can state one (:func:`plausible_range_ml`);
- **agreement Dice** between the source and the adapted prediction, per class (:func:`nnunet_sfda.metrics.dice`);
- **flip agreement** of each model: the mean foreground Dice between its prediction and its prediction on the
  flipped image, flipped back. A cheap test-time-augmentation consistency: a model that segments the anatomy and
  not the noise gives (nearly) the same answer on a mirrored scan; a collapsed or unstable one does not.

The recommendation rule (:func:`recommend`) and its thresholds (:class:`Thresholds`, :data:`THRESHOLDS`) are
documented in ``docs/report.md``; ``scripts/evaluate_report.py`` replays the rule with other thresholds on recorded
reports.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from nnunet_sfda.metrics import LabelValue, case_metrics, foreground_labels
from nnunet_sfda.priors import ClassRatioPrior

Recommendation = Literal["adapted", "source", "review"]
RECOMMENDATIONS: tuple[Recommendation, ...] = ("adapted", "source", "review")

@dataclass(frozen=True)
class Thresholds:
    """The constants of the flags and of the recommendation rule (docs/report.md); the report file records them."""

    #: a class whose adapted volume is this many times the source's (or 1/this) is flagged as grown (shrunk)
    volume_change_flag: float = 2.0
    #: source and adapted "disagree" below this mean foreground Dice between their predictions
    disagreement_dice: float = 0.5
    #: the adapted prediction is "unstable" below this flip agreement (0.8 until the development seed's reports
    #: showed small structures of good predictions at 0.7-0.75)
    flip_agreement_min: float = 0.6
    #: the source is "clearly more consistent" when its flip agreement exceeds the adapted one's by more than this
    flip_margin: float = 0.1
    #: where source and adapted are both outside a class's range, an adapted volume whose distance to the range (in
    #: log volume) is below this fraction of the source's counts as progress, not as a reason to stop at rule 1
    #: (0: never; 1 chosen on the development seed's reports, where "both outside" was most false flags)
    range_progress: float = 1.0


#: the thresholds `nnunet-sfda report` uses
THRESHOLDS = Thresholds()

Range = tuple[float, float]


def plausible_range_ml(prior: ClassRatioPrior | None, fov_ml: float,
                       case: str | None = None) -> dict[str, Range | None]:
    """The plausible volume range (low, high) in mL of each foreground class in one case, from the prior.

    ``fov_ml`` is the case's field of view (the image cropped to its non-zero region: the prior's frame). The most
    specific statement wins, per class:

    1. the case's ratio range (``per_case_bounds[case]``, prior format 2) times the field of view;
    2. the structure's volume range (``plausible_volume_ml``, format 2), capped at the field of view;
    3. the dataset-wide ``lower``/``upper`` ratio envelope times the field of view (a missing side is 0 or
       infinity).

    A class the prior states nothing for gives ``None``; no prior gives an empty mapping.
    """
    if prior is None:
        return {}
    ranges: dict[str, Range | None] = {}
    case_bounds = (prior.per_case_bounds or {}).get(case) if case is not None else None
    volumes = prior.plausible_volume_ml or {}
    for name in prior.labels[1:]:
        if case_bounds is not None:
            low, high = case_bounds[name]
            ranges[name] = (float(low) * fov_ml, float(high) * fov_ml)
        elif name in volumes:
            low, high = volumes[name]
            ranges[name] = (min(float(low), fov_ml), min(float(high), fov_ml))
        else:
            low = (prior.lower or {}).get(name)
            high = (prior.upper or {}).get(name)
            ranges[name] = None if low is None and high is None else (
                0.0 if low is None else float(low) * fov_ml, math.inf if high is None else float(high) * fov_ml)
    return ranges


@dataclass(frozen=True)
class ClassMeasures:
    """One foreground class of one case."""

    source_ml: float
    adapted_ml: float
    plausible_ml: Range | None
    agreement_dice: float  # source vs adapted

    def outside_range(self, model: Literal["source", "adapted"]) -> bool:
        if self.plausible_ml is None:
            return False
        volume = self.source_ml if model == "source" else self.adapted_ml
        return not self.plausible_ml[0] <= volume <= self.plausible_ml[1]

    def range_distance(self, model: Literal["source", "adapted"]) -> float:
        """How far outside the plausible range the volume lies, as |log(volume / nearest bound)| (0 inside or
        without a range; infinite for an empty prediction outside it)."""
        if not self.outside_range(model):
            return 0.0
        volume = self.source_ml if model == "source" else self.adapted_ml
        low, high = self.plausible_ml
        if volume <= 0:
            return math.inf
        return math.log(low / volume) if volume < low else math.log(volume / high)

    def came_nearer_range(self, progress: float) -> bool:
        """Both volumes outside the range, the adapted one's distance below ``progress`` × the source's."""
        source = self.range_distance("source")
        return self.outside_range("source") and self.range_distance("adapted") < progress * source

    @property
    def unchanged(self) -> bool:
        """Source and adapted predict this class on the same voxels (equal volumes, agreement Dice 1)."""
        return self.source_ml == self.adapted_ml and self.agreement_dice == 1.0

    def implausible(self, model: Literal["source", "adapted"]) -> bool:
        """Outside the plausible range where one is known; else empty while the other model finds the class."""
        if self.plausible_ml is not None:
            return self.outside_range(model)
        mine, other = (self.source_ml, self.adapted_ml) if model == "source" else (self.adapted_ml, self.source_ml)
        return mine == 0 and other > 0


@dataclass(frozen=True)
class CaseMeasures:
    """The label-free measures of one case (see the module docstring)."""

    case: str
    classes: dict[str, ClassMeasures]
    flip_agreement_source: float
    flip_agreement_adapted: float

    @property
    def agreement_dice(self) -> float:
        """Mean over the foreground classes of the source-vs-adapted Dice."""
        return float(np.mean([c.agreement_dice for c in self.classes.values()]))

    @property
    def unchanged(self) -> bool:
        """Adaptation left this case's prediction as the source made it, voxel for voxel."""
        return bool(self.classes) and all(c.unchanged for c in self.classes.values())

    def implausible(self, model: Literal["source", "adapted"]) -> list[str]:
        return [name for name, c in self.classes.items() if c.implausible(model)]


def class_volumes_ml(seg: np.ndarray, labels: Mapping[str, LabelValue], voxel_ml: float) -> dict[str, float]:
    """Volume in mL of each foreground class of a label map."""
    return {name: int(np.count_nonzero(np.isin(seg, value))) * voxel_ml
            for name, value in foreground_labels(labels).items()}


def _dice_per_class(a: np.ndarray, b: np.ndarray, labels: Mapping[str, LabelValue]) -> dict[str, float]:
    # the one Dice (metrics.py); spacing does not enter the Dice
    return case_metrics(a, b, [1.0] * a.ndim, labels, distances=False).dice


def flip_agreement(seg: np.ndarray, seg_of_flipped_back: np.ndarray, labels: Mapping[str, LabelValue]) -> float:
    """Mean foreground Dice between a prediction and the prediction of the flipped image, flipped back."""
    return float(np.mean(list(_dice_per_class(seg, seg_of_flipped_back, labels).values())))


def measure_case(case: str, source: np.ndarray, adapted: np.ndarray, source_flipped_back: np.ndarray,
                 adapted_flipped_back: np.ndarray, labels: Mapping[str, LabelValue], voxel_ml: float,
                 plausible: Mapping[str, Range | None]) -> CaseMeasures:
    """The measures of one case from the four predictions (label maps of one shape)."""
    source_ml = class_volumes_ml(source, labels, voxel_ml)
    adapted_ml = class_volumes_ml(adapted, labels, voxel_ml)
    agreement = _dice_per_class(adapted, source, labels)
    classes = {name: ClassMeasures(source_ml[name], adapted_ml[name], plausible.get(name), agreement[name])
               for name in foreground_labels(labels)}
    return CaseMeasures(case, classes, flip_agreement(source, source_flipped_back, labels),
                        flip_agreement(adapted, adapted_flipped_back, labels))


def _range_text(r: Range) -> str:
    return f"{r[0]:.3g}–{r[1]:.3g} mL" if math.isfinite(r[1]) else f"≥ {r[0]:.3g} mL"


def _volume_flags(name: str, c: ClassMeasures, t: Thresholds) -> list[str]:
    if c.source_ml == 0 or c.adapted_ml == 0:
        if c.source_ml == c.adapted_ml:
            return [f"empty prediction for {name} (source and adapted)"]
        empty, other, volume = ("adapted", "source", c.source_ml) if c.adapted_ml == 0 else \
            ("source", "adapted", c.adapted_ml)
        return [f"empty prediction for {name} ({empty}; {other} {volume:.3g} mL)"]
    factor = c.adapted_ml / c.source_ml
    change = (f"grew {factor:.1f}×" if factor >= t.volume_change_flag else
              f"shrank to {factor:.2f}×" if factor <= 1 / t.volume_change_flag else None)
    flags = []
    if c.outside_range("adapted"):
        where = "left" if not c.outside_range("source") else "is outside (as the source was)"
        flags.append(f"{name} {change + ' and ' if change else ''}{where} the plausible range "
                     f"({c.adapted_ml:.3g} mL; {_range_text(c.plausible_ml)})")
    elif change:
        flags.append(f"{name} {change} ({c.source_ml:.3g} → {c.adapted_ml:.3g} mL)")
    if c.outside_range("source") and not c.outside_range("adapted"):
        flags.append(f"{name}: source outside the plausible range ({c.source_ml:.3g} mL; "
                     f"{_range_text(c.plausible_ml)}), adapted inside")
    return flags


def case_flags(m: CaseMeasures, t: Thresholds = THRESHOLDS) -> list[str]:
    """What is unusual about a case, in words (empty: nothing)."""
    flags = ["adaptation left this case unchanged"] if m.unchanged else []
    flags += [flag for name, c in m.classes.items() for flag in _volume_flags(name, c, t)]
    if m.agreement_dice < t.disagreement_dice:
        flags.append(f"source and adapted disagree (Dice {m.agreement_dice:.2f})")
    if m.flip_agreement_adapted < t.flip_agreement_min:
        flags.append(f"adapted unstable under a flip (agreement {m.flip_agreement_adapted:.2f})")
    if m.flip_agreement_source - m.flip_agreement_adapted > t.flip_margin:
        flags.append(f"source more consistent under a flip ({m.flip_agreement_source:.2f} vs "
                     f"{m.flip_agreement_adapted:.2f})")
    return flags


def recommend(m: CaseMeasures, t: Thresholds = THRESHOLDS) -> Recommendation:
    """Which prediction to use for this case, by the first rule that applies (see docs/report.md):

    0. adaptation left the prediction unchanged (:attr:`CaseMeasures.unchanged`) → ``adapted``: it is the source's
       segmentation, so adaptation cannot have harmed it (its flags still say whether it is plausible);
    1. the adapted prediction is implausible for some class (outside its plausible range; without a range: empty
       where the source finds the class) → ``source`` if the source is plausible for every class, else ``review``;
       a class where both lie outside the range and the adapted volume came nearer it (distance below
       ``t.range_progress`` × the source's) does not count here;
    2. the source is clearly more consistent under a flip (by more than ``t.flip_margin``) and plausible →
       ``source``;
    3. the adapted prediction is unstable under a flip (below ``t.flip_agreement_min``) → ``review``;
    4. source and adapted disagree (below ``t.disagreement_dice``) while the source is plausible → ``review``
       (with an implausible source, disagreeing with it is what adaptation is for);
    5. otherwise → ``adapted``.
    """
    if m.unchanged:
        return "adapted"
    source_plausible = not m.implausible("source")
    if any(not m.classes[name].came_nearer_range(t.range_progress) for name in m.implausible("adapted")):
        return "source" if source_plausible else "review"
    if m.flip_agreement_source - m.flip_agreement_adapted > t.flip_margin and source_plausible:
        return "source"
    if m.flip_agreement_adapted < t.flip_agreement_min:
        return "review"
    if m.agreement_dice < t.disagreement_dice and source_plausible:
        return "review"
    return "adapted"
