"""Augmented batches (workers.training.batches): the padded random crop."""

import numpy as np
import pytest
import torch

from workers.training.batches import AugmentationSettings, augment


def test_a_padded_crop_is_the_image_shifted_by_at_most_the_padding_with_zeros_shifted_in():
    image = torch.arange(1, 1 + 10 * 10, dtype=torch.int64).reshape(1, 10, 10).clamp(max=255).to(torch.uint8)
    settings = AugmentationSettings(pad_padding=3, horizontal_flip=False)
    shifts = set()
    for step in range(40):
        view = augment(image[None], settings, np.random.default_rng([0, step]))[0]
        assert view.shape == image.shape and view.dtype == torch.uint8
        shift = _shift_of(view, image, 3)
        assert shift is not None, "not a shifted copy of the image"
        shifts.add(shift)
    assert len(shifts) > 5  # offsets vary with the step


def _shift_of(view, image, pad):
    padded = torch.nn.functional.pad(image, [pad] * 4)
    size = image.shape[-1]
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            if torch.equal(padded[:, top : top + size, left : left + size], view):
                return top, left
    return None


def test_the_same_seed_and_step_give_the_same_padded_crops():
    batch = torch.randint(0, 255, (4, 1, 12, 12), dtype=torch.uint8)
    settings = AugmentationSettings(pad_padding=4)
    first = augment(batch, settings, np.random.default_rng([7, 3]))
    assert torch.equal(first, augment(batch, settings, np.random.default_rng([7, 3])))
    assert not torch.equal(first, augment(batch, settings, np.random.default_rng([7, 4])))


def test_a_negative_padding_is_refused():
    with pytest.raises(ValueError, match="pad_padding"):
        AugmentationSettings(pad_padding=-1)
