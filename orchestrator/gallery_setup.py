"""Getting the frozen gallery model for a search: load a checkpoint, or train and save one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from orchestrator.config import CmpnasConfig
from workers.checkpoint import CheckpointError
from workers.datasets import RetrievalData
from workers.fit import OptimSettings
from workers.gallery import GalleryCheckpoint, load_gallery, save_gallery
from workers.gallery_training import GalleryTrainingSettings, train_gallery

Log = Callable[[str], None]


def gallery_training_settings(config: CmpnasConfig) -> GalleryTrainingSettings:
    gallery = config.gallery
    return GalleryTrainingSettings(
        backbone=gallery.backbone,
        embed_dim=gallery.embed_dim,
        stem_stride=gallery.stem_stride,
        optim=OptimSettings(epochs=gallery.epochs, batch_size=gallery.batch_size, lr=gallery.lr,
                            weight_decay=gallery.weight_decay, seed=config.data.seed),
    )


def train_and_save_gallery(config: CmpnasConfig, data: RetrievalData, device: torch.device, log: Log) -> GalleryCheckpoint:
    path = config.gallery_checkpoint_path
    settings = gallery_training_settings(config)
    log(f"training gallery model {settings.backbone} (D={settings.embed_dim}) on {len(data.train)} images, "
        f"{settings.optim.epochs} epochs, on {device}")
    model = train_gallery(
        data, settings, device,
        on_epoch=lambda epoch, stats: log(f"  gallery epoch {epoch}: loss {stats['loss']:.4f}, "
                                          f"{stats['images_per_second']:.0f} images/s"),
    )
    info = {"dataset": data.name, "train_images": len(data.train), "epochs": settings.optim.epochs,
            "class_names": list(data.class_names), "split": split_identity(config)}
    save_gallery(path, model, data.mean, data.std, info)
    checkpoint = load_gallery(path, device)
    log(f"saved gallery checkpoint {path} (fingerprint {checkpoint.fingerprint[:12]})")
    return checkpoint


def obtain_gallery(config: CmpnasConfig, data: RetrievalData, device: torch.device, log: Log) -> GalleryCheckpoint:
    """The configured checkpoint if it exists (checked against the data), else a newly trained one."""
    path = config.gallery_checkpoint_path
    if config.gallery.checkpoint and not Path(config.gallery.checkpoint).is_file():
        raise CheckpointError(
            f"gallery.checkpoint={config.gallery.checkpoint!r} does not exist; train one with "
            "`cmpnas gallery train`, or remove gallery.checkpoint to train on first use"
        )
    if not path.is_file():
        return train_and_save_gallery(config, data, device, log)
    checkpoint = load_gallery(path, device)
    check_gallery_fits(checkpoint, config, data, path)
    log(f"using gallery checkpoint {path} (fingerprint {checkpoint.fingerprint[:12]})")
    return checkpoint


def split_identity(config: CmpnasConfig) -> dict:
    """What decides which images land in the query and gallery splits."""
    data = config.data
    return {"source": data.source, "root": data.root, "seed": data.seed, "query_size": data.query_size,
            "gallery_size": data.gallery_size}


def check_gallery_fits(checkpoint: GalleryCheckpoint, config: CmpnasConfig, data: RetrievalData, path: Path) -> None:
    """Refuse a checkpoint made for other data, another split, or another gallery configuration.

    A reused gallery model must not have trained on today's query or gallery images: where the
    train split comes from the same pool as query and gallery (image folders), the split must be
    the one it was trained with.
    """
    arch = checkpoint.model.arch
    info = checkpoint.info
    problems = []
    for field, configured, recorded in (("gallery.backbone", config.gallery.backbone, arch.backbone),
                                        ("gallery.embed_dim", config.gallery.embed_dim, arch.embed_dim),
                                        ("gallery.stem_stride", config.gallery.stem_stride, arch.stem_stride)):
        if configured != recorded:
            problems.append(f"{field} is {configured!r} but the checkpoint's is {recorded!r}")
    if info.get("dataset") != data.name or list(info.get("class_names", [])) != list(data.class_names):
        problems.append(f"it was trained on {info.get('dataset')!r} with classes {info.get('class_names')}, "
                        f"this search uses {data.name!r} with classes {list(data.class_names)}")
    elif config.data.source == "image_folder" and info.get("split") != split_identity(config):
        problems.append("it was trained on another split of this image folder (data.seed, data.query_size or "
                        "data.gallery_size differ), so it may have seen today's query and gallery images")
    if arch.in_chans != data.in_chans:
        problems.append(f"it takes {arch.in_chans}-channel images, the data has {data.in_chans} (data.channels)")
    if arch.num_classes != data.num_classes:
        problems.append(f"its classifier has {arch.num_classes} classes, the data has {data.num_classes}")
    if arch.image_size != data.image_size:
        problems.append(f"it was trained on {arch.image_size}px images, the data has {data.image_size}px (data.image_size)")
    if problems:
        raise CheckpointError(
            f"gallery checkpoint {path} does not fit this data set: " + "; ".join(problems)
            + ". Point gallery.checkpoint at a matching checkpoint or train one with `cmpnas gallery train`"
        )
