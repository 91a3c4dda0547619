"""Built-in MobileNetV3-like spaces, scaled to the image sizes cmpnas targets.

The choices follow Once-for-All (kernel {3,5,7}, expansion {3,4,6}, elastic depth and resolution)
with fewer downsamplings and smaller widths, since 28x28 or 64x64 inputs carry far less signal
than 224x224 ImageNet crops.
"""

from __future__ import annotations

from search_space.registry import register_space
from search_space.space import SearchSpace, StageChoices

_KERNELS = (3, 5, 7)
_EXPANDS = (3, 4, 6)


def _stages(widths: list[tuple[int, ...]], strides: list[int], depths: tuple[int, ...]) -> tuple[StageChoices, ...]:
    # Later stages get squeeze-excite and hard-swish, as in MobileNetV3.
    return tuple(
        StageChoices(
            depths=depths,
            kernels=_KERNELS,
            expands=_EXPANDS,
            widths=stage_widths,
            stride=stride,
            use_se=index >= 2,
            activation="relu" if index < 2 else "hard_swish",
        )
        for index, (stage_widths, stride) in enumerate(zip(widths, strides))
    )


@register_space
def mnv3_28(*, embed_dim: int, in_chans: int) -> SearchSpace:
    """For 28x28 images (Fashion-MNIST, MNIST): stride-1 stem, then 28 -> 14 -> 7 -> 7 -> 4 -> 4."""
    return SearchSpace(
        name="mnv3_28",
        in_chans=in_chans,
        embed_dim=embed_dim,
        stem_width=16,
        head_width=256,
        resolutions=(20, 24, 28),
        stages=_stages(
            widths=[(8, 12, 16), (16, 24, 32), (24, 32, 40), (32, 48, 64), (48, 64, 96)],
            strides=[2, 2, 1, 2, 1],
            depths=(1, 2, 3),
        ),
    )


@register_space
def mnv3_64(*, embed_dim: int, in_chans: int) -> SearchSpace:
    """For 48-64 pixel images (faces, user image folders): four downsamplings after the stem."""
    return SearchSpace(
        name="mnv3_64",
        in_chans=in_chans,
        embed_dim=embed_dim,
        stem_width=16,
        head_width=512,
        resolutions=(48, 56, 64),
        stages=_stages(
            widths=[(12, 16, 24), (24, 32, 40), (32, 40, 48), (48, 64, 80), (64, 96, 128)],
            strides=[2, 2, 2, 1, 2],
            depths=(1, 2, 3),
        ),
    )
