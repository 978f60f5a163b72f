"""Run one augmentation spec through each pipeline on a single (image, mask), for comparison tests."""

from __future__ import annotations

import numpy as np

from nailseg.core.augment import IMAGENET_MEAN, IMAGENET_STD, to_albumentations
from tests.conftest import write_image


def coded_pair(h: int = 64, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes its mask (255 on the mask), and the mask (0/1)."""
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 20:50] = 1
    mask[40:58, 6:16] = 1
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = mask * 255
    image[..., 1] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    image[..., 2] = 90
    return image, mask


def denormalize(chw: np.ndarray) -> np.ndarray:
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None]
    return np.clip((chw * std + mean) * 255.0, 0, 255).transpose(1, 2, 0)


def albumentations_apply(ops, image, mask, size, crop=None):
    out = to_albumentations(ops, size, normalize=False, crop=crop)(image=image, mask=mask)
    return out["image"].astype(np.float32), out["mask"]


def kornia_apply(ops, image, mask, size, seed=0, crop=None):
    import torch

    from nailseg.stacks.lightning.loaders.kornia import GpuAugment

    torch.manual_seed(seed)
    aug = GpuAugment(ops, size, crop=crop)
    x = torch.from_numpy(image.transpose(2, 0, 1))[None]
    m = torch.from_numpy(mask)[None, None]
    xi, mi = aug(x, m, train=True)
    return denormalize(xi[0].numpy()), mi[0, 0].numpy().astype(np.uint8)


def dali_apply(ops, image, mask, size, tmp_path, n=1, seed=0, crop=None):
    """Write the pair to disk and read it back through the DALI pipeline (CPU), ``n`` times."""
    from nailseg.core.data.discover import Pair
    from nailseg.stacks.lightning.loaders.dali import DaliLoader

    img_path = write_image(tmp_path / "images" / "a.png", image)
    mask_path = write_image(tmp_path / "labels" / "a.png", mask * 255)
    pairs = [Pair("a.png", img_path, mask_path)] * n
    loader = DaliLoader(pairs, ops, size, batch_size=n, train=True, seed=seed, drop_last=False, device="cpu",
                        num_threads=1, crop=crop)
    batch = next(iter(loader))
    return [(denormalize(batch["image"][i].numpy()), batch["mask"][i, 0].numpy().astype(np.uint8)) for i in range(n)]
