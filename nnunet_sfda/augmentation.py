"""Two independently augmented views of a batch, and the way back to the batch's frame (pure torch).

Why: an augmentation-consistency objective (DG-TTA, Weihsbach et al., Sensors 2025) asks a network to give the same
segmentation for two versions of an image that differ only in things that should not matter. Spatial transforms
(mirroring, quarter turns, small affine warps) move the anatomy, so each view's prediction has to be mapped back to
the original frame before the two can be compared; where a warp moved image content out of the view, the mapped-back
prediction shows nothing and must not count (the validity mask). Appearance transforms (gamma, contrast/brightness,
smooth multiplicative bias field, blur, noise) mimic what changes between scanners and need no mapping back.

Everything works on batches ``(b, c, *spatial)`` with 2 or 3 spatial axes, per sample, on the batch's device, and
draws its randomness from a ``torch.Generator`` on that device, so a seeded run repeats. nnU-Net is not imported.

Flips and quarter turns are index operations and invert exactly; affine warps use ``affine_grid``/``grid_sample``
(``align_corners=False``, DG-TTA's convention) and invert to interpolation accuracy inside the validity mask.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["AppearanceAugment", "SpatialAugment", "SpatialView", "TwoViews", "ViewPair"]


def _check_batch(images: torch.Tensor, what: str = "images") -> int:
    if not isinstance(images, torch.Tensor) or images.ndim not in (4, 5):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a tensor (b, c, x, y) or (b, c, x, y, z), got {shape}")
    return images.ndim - 2


def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(b,) or (b, c) parameters shaped to broadcast over (b, c, *spatial)."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=generator.device)


def _spatial_dims(images: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(2, images.ndim))


# ------------------------------------------------------------------------------------------------- spatial
@dataclass(frozen=True)
class SpatialView:
    """One view's spatial transform, per sample: mirror, then a quarter turn, then an affine warp.

    ``flips``: (b, d) bool, axis a of sample i mirrored where ``flips[i, a]``. ``quarter_turns``: (b,) int in 0..3,
    counter-clockwise turns in the spatial ``plane`` (two axes of equal length; None: no turns).
    ``theta``: (b, d, d + 1) ``affine_grid`` matrices (view location -> source location, normalised coordinates,
    last spatial axis first as ``affine_grid`` wants), or None for no warp.
    """

    flips: torch.Tensor
    quarter_turns: torch.Tensor
    plane: tuple[int, int] | None
    theta: torch.Tensor | None

    def _flip(self, x: torch.Tensor) -> torch.Tensor:
        for axis in range(self.flips.shape[1]):
            mask = self.flips[:, axis]
            if bool(mask.any()):
                x = torch.where(_per_sample(mask, x.ndim), x.flip(2 + axis), x)
        return x

    def _turn(self, x: torch.Tensor, sign: int) -> torch.Tensor:
        if self.plane is None or not bool(self.quarter_turns.any()):
            return x
        dims = (2 + self.plane[0], 2 + self.plane[1])
        out = x.clone()
        for turns in (1, 2, 3):
            index = (self.quarter_turns == turns).nonzero().flatten()
            if index.numel():
                out[index] = torch.rot90(x[index], sign * turns, dims)
        return out

    def _inverse_theta(self) -> torch.Tensor:
        matrix, shift = self.theta[..., :-1], self.theta[..., -1:]
        inverse = torch.linalg.inv(matrix)
        return torch.cat([inverse, -inverse @ shift], dim=-1)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The view of ``images`` (b, c, *spatial). Where a warp reaches past the source it repeats the source's border
        (DG-TTA's choice): a zero fill would also leak into the interpolation of the voxels next to the image's
        edge, which then would not map back to themselves."""
        _check_batch(images)
        x = self._turn(self._flip(images), +1)
        if self.theta is not None:
            grid = F.affine_grid(self.theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return x

    def to_original(self, predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map the view's ``predictions`` (b, k, *spatial; probabilities preferably, since interpolating them keeps
        them on the simplex) back to the original frame.

        Returns ``(mapped, valid)``: ``valid`` (b, 1, *spatial) bool marks the original voxels whose location lay
        inside the view, so that the mapped prediction there is the network's; elsewhere (content the warp pushed
        out of the view) ``mapped`` is border-extended filler and must be ignored. Without a warp all is valid.
        """
        _check_batch(predictions, "predictions")
        y = predictions
        valid = torch.ones((y.shape[0], 1) + tuple(y.shape[2:]), dtype=torch.bool, device=y.device)
        if self.theta is not None:
            grid = F.affine_grid(self._inverse_theta().to(y.dtype), list(y.shape), align_corners=False)
            y = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=False)
            # inside the view's outermost voxel centres (±(1 - 1/n) in normalised coordinates): interpolation there
            # uses the view's own voxels only
            sizes = torch.tensor(y.shape[2:][::-1], dtype=y.dtype, device=y.device)  # grid is last axis first
            valid = (grid.abs() <= 1 - 1 / sizes + 1e-6).all(dim=-1).unsqueeze(1)
            valid = self._flip(self._turn(valid, -1))
        return self._flip(self._turn(y, -1)), valid


@dataclass(frozen=True)
class SpatialAugment:
    """How views are drawn: per sample, mirror each of ``flip_axes`` with probability ``flip_probability``; turn by
    a random multiple of 90° in a random plane of two ``rotation_axes`` of equal length (no turn where no such
    plane exists); warp with ``I + N(0, affine_strength²)`` matrices (DG-TTA's ``get_rand_affine``: 0.05),
    the noise clipped at 2.5 standard deviations so the matrix stays invertible.

    Axes are spatial axes counted from 0; None means all of them. For anisotropic 3d patches (nnU-Net's
    "dummy 2d" case) pass the in-plane axes only, or set ``affine_strength=0``.
    """

    flip_axes: tuple[int, ...] | None = None
    flip_probability: float = 0.5
    rotation_axes: tuple[int, ...] | None = None
    affine_strength: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be within 0 .. 1, got {self.flip_probability}")
        if not 0.0 <= self.affine_strength <= 0.15:
            raise ValueError(f"affine_strength must be within 0 .. 0.15 (small, invertible warps), got "
                             f"{self.affine_strength}")

    def _axes(self, chosen: tuple[int, ...] | None, ndim: int, what: str) -> tuple[int, ...]:
        axes = tuple(range(ndim)) if chosen is None else tuple(chosen)
        if any(a not in range(ndim) for a in axes):
            raise ValueError(f"{what} {axes} must be spatial axes 0 .. {ndim - 1}")
        return axes

    def rotation_planes(self, spatial_shape: tuple[int, ...]) -> list[tuple[int, int]]:
        """Planes in which a quarter turn keeps the shape: pairs of rotation axes of equal length."""
        axes = self._axes(self.rotation_axes, len(spatial_shape), "rotation_axes")
        return [(a, b) for a, b in itertools.combinations(axes, 2) if spatial_shape[a] == spatial_shape[b]]

    def sample(self, images: torch.Tensor, generator: torch.Generator) -> SpatialView:
        """Draw one view's transform for the batch ``images`` (b, c, *spatial) from ``generator``."""
        ndim = _check_batch(images)
        batch, device = images.shape[0], images.device
        flip_axes = self._axes(self.flip_axes, ndim, "flip_axes")
        flips = torch.zeros((batch, ndim), dtype=torch.bool, device=device)
        if flip_axes:
            drawn = _uniform((batch, len(flip_axes)), 0.0, 1.0, generator) < self.flip_probability
            flips[:, list(flip_axes)] = drawn.to(device)
        planes = self.rotation_planes(tuple(images.shape[2:]))
        plane = None
        turns = torch.zeros(batch, dtype=torch.long, device=device)
        if planes:
            choice = torch.randint(len(planes), (1,), generator=generator, device=generator.device)
            plane = planes[int(choice)]
            turns = torch.randint(4, (batch,), generator=generator, device=generator.device).to(device)
        theta = None
        if self.affine_strength > 0:
            noise = torch.randn((batch, ndim, ndim + 1), generator=generator, device=generator.device)
            identity = torch.eye(ndim, ndim + 1, device=generator.device)
            theta = (identity + self.affine_strength * noise.clamp(-2.5, 2.5)).to(device)
        return SpatialView(flips=flips, quarter_turns=turns, plane=plane, theta=theta)


# ---------------------------------------------------------------------------------------------- appearance
@dataclass(frozen=True)
class AppearanceAugment:
    """Scanner-like intensity changes, each applied per (sample, channel) with ``probability``, in this order:

    * gamma ``u ** g`` on the image's own min-max range (``u`` in 0..1, so negative z-scored intensities are
      safe), ``log g`` uniform in ``log gamma_range``;
    * contrast ``c`` about the mean and brightness ``b`` image standard deviations;
    * a smooth multiplicative bias field: coarse normal noise on a ``bias_grid`` control grid (std
      ``bias_strength``), upsampled, exponentiated and normalised to mean 1, applied to intensities measured from
      the image's minimum (so it scales tissue, not the z-score offset);
    * Gaussian blur with sigma (voxels) in ``blur_sigma_range`` (separable, border replicated);
    * additive Gaussian noise, std in ``noise_range`` image standard deviations.
    """

    probability: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_range: tuple[float, float] = (0.75, 1.25)
    brightness_range: tuple[float, float] = (-0.1, 0.1)
    bias_strength: float = 0.3
    bias_grid: int = 4
    blur_sigma_range: tuple[float, float] = (0.5, 1.0)
    noise_range: tuple[float, float] = (0.0, 0.1)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within 0 .. 1, got {self.probability}")
        for name in ("gamma_range", "contrast_range", "brightness_range", "blur_sigma_range", "noise_range"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        if self.gamma_range[0] <= 0 or self.contrast_range[0] < 0 or self.blur_sigma_range[0] < 0 \
                or self.noise_range[0] < 0 or self.bias_strength < 0 or self.bias_grid < 2:
            raise ValueError("gamma must be > 0; contrast, blur sigma, noise and bias strength >= 0; bias_grid >= 2")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A new tensor: ``images`` (b, c, *spatial) with per-image random appearance changes."""
        ndim = _check_batch(images)
        x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
        pairs = tuple(x.shape[:2])
        dims = _spatial_dims(x)

        def chosen() -> torch.Tensor:
            return _per_sample(_uniform(pairs, 0.0, 1.0, generator) < self.probability, x.ndim).to(x.device)

        def param(bounds: tuple[float, float], log: bool = False) -> torch.Tensor:
            low, high = (math.log(b) for b in bounds) if log else bounds
            value = _uniform(pairs, low, high, generator)
            return _per_sample(value.exp() if log else value, x.ndim).to(device=x.device, dtype=x.dtype)

        # Every parameter is drawn whether or not it is used, so the random stream does not depend on the choices;
        # a transform no image was chosen for is skipped (they are cheap on a GPU, not on a CPU).
        # gamma on the min-max range
        use, gamma = chosen(), param(self.gamma_range, log=True)
        if bool(use.any()):
            low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
            span = (high - low).clamp_min(1e-8)
            unit = ((x - low) / span).clamp(0, 1)
            x = torch.where(use, low + span * unit.pow(gamma), x)
        # contrast and brightness
        use, contrast, brightness = chosen(), param(self.contrast_range), param(self.brightness_range)
        if bool(use.any()):
            mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True)
            x = torch.where(use, (x - mean) * contrast + mean + brightness * std, x)
        # smooth multiplicative bias field
        use = chosen()
        coarse = torch.randn(pairs + (self.bias_grid,) * ndim, generator=generator, device=generator.device)
        if bool(use.any()) and self.bias_strength > 0:
            coarse = (self.bias_strength * coarse).to(device=x.device, dtype=x.dtype)
            mode = "bilinear" if ndim == 2 else "trilinear"
            bias = F.interpolate(coarse, size=tuple(x.shape[2:]), mode=mode, align_corners=True).exp()
            bias = bias / bias.mean(dim=dims, keepdim=True)
            floor = x.amin(dim=dims, keepdim=True)
            x = torch.where(use, floor + (x - floor) * bias, x)
        # blur: unchosen images get sigma 0 (a delta kernel)
        sigma = param(self.blur_sigma_range) * chosen()
        x = _gaussian_blur(x, sigma.flatten(), max(self.blur_sigma_range[1], 1e-3))
        # noise
        level = param(self.noise_range) * chosen()
        noise = torch.randn(tuple(x.shape), generator=generator, device=generator.device)
        if bool((level > 0).any()):
            std = x.std(dim=dims, keepdim=True)
            x = x + level * std * noise.to(device=x.device, dtype=x.dtype)
        return x.to(images.dtype)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each (sample, channel) image with its own ``sigma`` (flattened (b*c,))."""
    if not bool((sigma > 0).any()):
        return x
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    delta = (offsets == 0).to(x.dtype)[None].expand_as(kernel)
    kernel = torch.where(sigma[:, None] > 0, kernel, delta)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    ndim = x.ndim - 2
    conv = F.conv2d if ndim == 2 else F.conv3d
    shape = x.shape
    y = x.reshape((1, shape[0] * shape[1]) + tuple(shape[2:]))
    for axis in range(ndim):
        view = [1] * ndim
        view[axis] = kernel.shape[1]
        pad = [0, 0] * ndim
        pad[2 * (ndim - 1 - axis)] = pad[2 * (ndim - 1 - axis) + 1] = radius  # F.pad lists the last axis first
        y = conv(F.pad(y, pad, mode="replicate"), kernel.reshape([kernel.shape[0], 1] + view), groups=y.shape[1])
    return y.reshape(shape)


# ---------------------------------------------------------------------------------------------- two views
@dataclass(frozen=True)
class ViewPair:
    """Two views of one batch: their images for the network and their spatial transforms for the way back."""

    images_a: torch.Tensor
    images_b: torch.Tensor
    spatial_a: SpatialView
    spatial_b: SpatialView

    def to_common_frame(self, logits_a: torch.Tensor, logits_b: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Softmax each view's full-resolution logits in its own frame, map both back to the batch's frame.

        Returns ``(probs_a, probs_b, valid)`` with ``valid`` (b, 1, *spatial) bool: voxels both views kept.
        Computed in float32 (float64 kept) so autocast logits interpolate accurately.
        """
        dtype = torch.float64 if logits_a.dtype == torch.float64 else torch.float32
        probs_a, valid_a = self.spatial_a.to_original(torch.softmax(logits_a.to(dtype), dim=1))
        probs_b, valid_b = self.spatial_b.to_original(torch.softmax(logits_b.to(dtype), dim=1))
        return probs_a, probs_b, valid_a & valid_b


@dataclass
class TwoViews:
    """Makes two independently augmented views of a batch, reproducibly from ``seed``.

    One generator per device, created on first use from ``seed`` (a CUDA and a CPU run draw different numbers;
    each repeats itself). ``appearance=None`` leaves intensities alone.
    """

    spatial: SpatialAugment = field(default_factory=SpatialAugment)
    appearance: AppearanceAugment | None = field(default_factory=AppearanceAugment)
    seed: int = 0
    _generators: dict[str, torch.Generator] = field(default_factory=dict, init=False, repr=False)

    def generator_for(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(int(self.seed))
        return self._generators[key]

    def __call__(self, images: torch.Tensor) -> ViewPair:
        """Two views of ``images`` (b, c, *spatial); gradients do not flow into the augmentation."""
        _check_batch(images)
        generator = self.generator_for(images.device)
        with torch.no_grad():
            views = []
            for _ in range(2):
                spatial = self.spatial.sample(images, generator)
                view = images if self.appearance is None else self.appearance(images, generator)
                views.append((spatial.apply(view), spatial))
        (images_a, spatial_a), (images_b, spatial_b) = views
        return ViewPair(images_a=images_a, images_b=images_b, spatial_a=spatial_a, spatial_b=spatial_b)
