"""One image, from its file to a training or evaluation sample: decode, then transform.

:func:`read_image` / :func:`decode_image_bytes` decode a JPEG or PNG with
:func:`torchvision.io.decode_image` (PIL as the fallback for what it cannot read) to ``uint8`` RGB
``(3, H, W)``. :func:`train_transform` is RandomResizedCrop (torchvision's sampling, drawn from an
explicit numpy generator, so an image's augmentation is a function of its seed) and a horizontal
flip; :func:`eval_transform` resizes the shorter side to ``round(resolution / 0.875)`` and
center-crops ``resolution``. Both give ``uint8`` ``(3, resolution, resolution)``; normalisation
happens later, on the device (:meth:`kshot.train.run_data.TrainData.prepare`). The streaming
datasets (:mod:`kshot.data.stream`) apply them per image in DataLoader workers; the batched
transforms of in-memory data are :mod:`kshot.data.transforms`.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

try:  # deprecated in torchvision 0.29 in favour of TorchCodec; PIL decodes once it is gone
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - depends on the installed torchvision
    ImageReadMode = decode_image = None

from kshot import storage

__all__ = [
    "CROP_SCALE",
    "CROP_RATIO",
    "EVAL_CROP_FRACTION",
    "read_image",
    "decode_image_bytes",
    "random_resized_crop_params",
    "train_transform",
    "eval_transform",
]

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_CROP_FRACTION = 0.875  # resize the shorter side to resolution / 0.875, e.g. 256 for 224
_CROP_TRIES = 10


def decode_image_bytes(data: bytes | bytearray, name: str) -> torch.Tensor:
    """Decode an encoded JPEG/PNG (or anything PIL reads) to a ``uint8`` RGB ``(3, H, W)`` tensor.

    Args:
        data: The file's bytes.
        name: The file's path or URI, for error messages.

    Raises:
        ValueError: the data is empty or neither torchvision nor PIL can decode it.
    """
    if not data:
        raise ValueError(f"cannot decode image {name}: the file is empty")
    failure = "torchvision cannot decode images"
    if decode_image is not None:
        buffer = data if isinstance(data, bytearray) else bytearray(data)  # frombuffer: writable
        try:
            with warnings.catch_warnings():  # torchvision >= 0.29 warns on every call
                warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
                return decode_image(
                    torch.frombuffer(buffer, dtype=torch.uint8), mode=ImageReadMode.RGB
                )
        except RuntimeError as err:
            failure = str(err)
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.array(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as pil_err:
        raise ValueError(f"cannot decode image {name}: {failure}; PIL: {pil_err}") from pil_err
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def read_image(uri: str) -> torch.Tensor:
    """Read and decode the image at ``uri`` (local path or store URI) to ``uint8`` RGB ``(3, H, W)``.

    Raises:
        FileNotFoundError: nothing exists at ``uri``.
        ValueError: the file cannot be decoded (naming ``uri``).
    """
    return decode_image_bytes(bytearray(storage.read_bytes(uri)), uri)


def random_resized_crop_params(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """The crop box of RandomResizedCrop, torchvision's sampling algorithm drawn from ``rng``.

    Up to 10 tries draw an area share from ``U(scale)`` and a log aspect ratio from
    ``U(log ratio)`` and keep the first box that fits; otherwise the largest central box whose
    aspect ratio is clamped into ``ratio``.

    Returns:
        ``(top, left, crop_height, crop_width)``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_TRIES):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image: torch.Tensor, resolution: int, rng: np.random.Generator) -> torch.Tensor:
    """RandomResizedCrop to ``resolution`` (scale 0.08-1, ratio 3/4-4/3) and a flip with p 0.5.

    Args:
        image: ``uint8`` ``(C, H, W)``.
        resolution: The output's side.
        rng: The source of every random choice (crop box first, then the flip).

    Returns:
        ``uint8`` ``(C, resolution, resolution)``.
    """
    top, left, h, w = random_resized_crop_params(image.shape[-2], image.shape[-1], rng)
    flip = bool(rng.random() < 0.5)
    out = TF.resized_crop(image, top, left, h, w, [resolution, resolution], antialias=True)
    return out.flip(-1) if flip else out


def eval_transform(image: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``round(resolution / 0.875)``, then center-crop ``resolution``.

    Args:
        image: ``uint8`` ``(C, H, W)``.
        resolution: The output's side (224 gives the usual 256 → 224).

    Returns:
        ``uint8`` ``(C, resolution, resolution)``.
    """
    resized = TF.resize(image, [round(resolution / EVAL_CROP_FRACTION)], antialias=True)
    return TF.center_crop(resized, [resolution, resolution])
