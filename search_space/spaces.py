"""Built-in MobileNetV3-like spaces, one per range of image sizes cmpnas targets.

The choices follow Once-for-All (kernel {3,5,7}, expansion {3,4,6}, elastic depth and resolution).
The rules:

- ``mnv3_28`` and ``mnv3_64`` (digits, clothing, faces) keep a stride-1 stem, fewer downsamplings
  and smaller widths, since 28x28 or 64x64 inputs carry far less signal than 224x224 ImageNet crops.
- ``ofa_mnv3_224`` (photos) is Once-for-All's own MobileNetV3 space as far as ``SearchSpace`` can
  express it: stride-2 stem, five elastic stages with OFA's widths, strides, squeeze-excite and
  activations; its docstring lists where it differs from OFA.
- A space's name states its largest input side; a space's genes never change a stage's stride, so
  the sizes of the feature maps follow from the resolution alone (``search_space.budget`` needs it).
- A space declares ``image_sizes``, the ``data.image_size`` range it is meant for, and a search
  refuses data outside it (``orchestrator.setup.inputs.check_space_fits_images``). The range runs
  from the space's smallest resolution (below it, every candidate would enlarge the images: pixels
  the data do not have, FLOPs spent on them) to twice its largest for the small spaces (beyond it,
  every candidate throws away more than 3/4 of the pixels: the next space up fits). The ranges
  overlap, so every size from 20 px up has a space. ``ofa_mnv3_224``, the largest, takes up to
  1024 px: data may be stored larger than the query models' input for a gallery model with a
  larger input (``docs/data.md``: set ``data.image_size`` to the largest size any model needs).
"""

from __future__ import annotations

from search_space.registry import register_space
from search_space.space import SearchSpace, StageChoices

_KERNELS = (3, 5, 7)
_EXPANDS = (3, 4, 6)


def _stages(widths: list[tuple[int, ...]], strides: list[int], depths: tuple[int, ...],
            use_se: list[bool] | None = None, activations: list[str] | None = None) -> tuple[StageChoices, ...]:
    # By default later stages get squeeze-excite and hard-swish, as in MobileNetV3.
    use_se = use_se or [index >= 2 for index in range(len(widths))]
    activations = activations or ["relu" if index < 2 else "hard_swish" for index in range(len(widths))]
    return tuple(
        StageChoices(
            depths=depths,
            kernels=_KERNELS,
            expands=_EXPANDS,
            widths=stage_widths,
            stride=stride,
            use_se=stage_se,
            activation=activation,
        )
        for stage_widths, stride, stage_se, activation in zip(widths, strides, use_se, activations, strict=True)
    )


@register_space
def mnv3_28(*, embed_dim: int, in_chans: int) -> SearchSpace:
    """For 28x28 images (Fashion-MNIST, MNIST): stride-1 stem, then 28 -> 14 -> 7 -> 7 -> 4 -> 4.

    Data of 20-56 px (``image_sizes``): its resolutions are 20-28, and 32 px thumbnails (CIFAR-sized)
    fit too."""
    return SearchSpace(
        name="mnv3_28",
        in_chans=in_chans,
        embed_dim=embed_dim,
        stem_width=16,
        head_width=256,
        resolutions=(20, 24, 28),
        image_sizes=(20, 56),
        stages=_stages(
            widths=[(8, 12, 16), (16, 24, 32), (24, 32, 40), (32, 48, 64), (48, 64, 96)],
            strides=[2, 2, 1, 2, 1],
            depths=(1, 2, 3),
        ),
    )


@register_space
def mnv3_64(*, embed_dim: int, in_chans: int) -> SearchSpace:
    """For 48-64 pixel images (faces, user image folders): four downsamplings after the stem.

    Data of 48-128 px (``image_sizes``): its resolutions are 48-64; above 128 px, ``ofa_mnv3_224``."""
    return SearchSpace(
        name="mnv3_64",
        in_chans=in_chans,
        embed_dim=embed_dim,
        stem_width=16,
        head_width=512,
        resolutions=(48, 56, 64),
        image_sizes=(48, 128),
        stages=_stages(
            widths=[(12, 16, 24), (24, 32, 40), (32, 40, 48), (48, 64, 80), (64, 96, 128)],
            strides=[2, 2, 2, 1, 2],
            depths=(1, 2, 3),
        ),
    )


@register_space
def ofa_mnv3_224(*, embed_dim: int, in_chans: int) -> SearchSpace:
    """For 128-224 pixel photos: Once-for-All's MobileNetV3 space (Cai et al. 2020, ``OFAMobileNetV3``).

    As in OFA: a 16-channel 3x3 stride-2 stem with hard-swish; five elastic stages of 2-4 blocks,
    kernel {3,5,7} and expansion {3,4,6}, strides 2/2/2/1/2 (224 -> 112 -> 56 -> 28 -> 14 -> 14 -> 7),
    squeeze-excite in the 2nd, 4th and 5th, ReLU in the first two and hard-swish after; a 1280-wide
    hard-swish feature layer after pooling; resolution {128, 160, 192, 224}. Where it differs:

    - widths: each stage chooses between OFA's x1.0 and x1.2 widths (OFA trains one supernet per
      width multiplier; here width is one more elastic gene). The stem stays 16 and the feature
      layer 1280 (OFA x1.2: 24 and 1536).
    - OFA's fixed first block (3x3 depthwise-separable, 16 channels, stride 1, residual; ~6 MFLOPs at
      224) is left out: ``SearchSpace`` has no fixed blocks, the stem feeds the first stage.
    - OFA's final 1x1 expansion to 960 channels before pooling (8-9 MFLOPs at 224) is left out: the
      pooled last stage (160 or 192 channels) goes straight into the 1280-wide feature layer.
    - the head projects to the gallery's ``embed_dim`` (L2-normalised) instead of classifying.

    Data of 128-1024 px (``image_sizes``): below 128 px every candidate would enlarge the images
    (``mnv3_64`` fits up to 128 px); above 224 px the images are reduced to the candidate's
    resolution, which leaves room for a gallery model with a larger input.

    Cost for one 3-channel image and ``embed_dim`` 128 (fvcore's count, one multiply-add = one flop):
    37.04 MFLOPs (smallest: 128 px, depth 2, kernel 3, expansion 3, x1.0) to 802.22 MFLOPs
    (largest: 224 px, depth 4, kernel 7, expansion 6, x1.2); ``tests/search_space/test_ofa_space.py``
    pins both.
    """
    return SearchSpace(
        name="ofa_mnv3_224",
        in_chans=in_chans,
        embed_dim=embed_dim,
        stem_width=16,
        stem_stride=2,
        head_width=1280,
        resolutions=(128, 160, 192, 224),
        image_sizes=(128, 1024),
        stages=_stages(
            # OFA's widths at multipliers 1.0 and 1.2, rounded to multiples of 8 as OFA rounds them.
            widths=[(24, 32), (40, 48), (80, 96), (112, 136), (160, 192)],
            strides=[2, 2, 2, 1, 2],
            depths=(2, 3, 4),
            use_se=[False, True, False, True, True],
            activations=["relu", "relu", "hard_swish", "hard_swish", "hard_swish"],
        ),
    )
