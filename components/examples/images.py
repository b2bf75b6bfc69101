"""Image bytes <-> pixels with PIL, on the Beam side: no TensorFlow graph per record."""
from __future__ import annotations

import io
from typing import Optional

import numpy as np

from components.examples.keys import RecordError


def encode_image(pixels: np.ndarray, image_format: str = "png") -> bytes:
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise RecordError(f"image: expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = io.BytesIO()
    if image_format == "png":
        Image.fromarray(pixels).save(buffer, format="PNG")
    elif image_format == "jpeg":
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    else:
        raise RecordError(f"image/format: expected 'png' or 'jpeg', got {image_format!r}")
    return buffer.getvalue()


def decode_image(data: bytes, channels: Optional[int] = None) -> np.ndarray:
    """Decode PNG/JPEG/GIF/BMP bytes fully (a truncated file raises instead of returning grey)."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if channels == 1:
                image = image.convert("L")
            elif channels == 3 or (channels is None and image.mode not in ("L",)):
                image = image.convert("RGB")
            pixels = np.asarray(image, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for bad bytes
        raise RecordError(f"image cannot be decoded: {exc}") from None
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return pixels


def decode_mask(data: bytes) -> np.ndarray:
    """A PNG of class ids (palette PNGs keep their indices) -> uint8 [H, W]."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "P"):
                raise RecordError(f"mask: expected a single-channel or palette PNG, got mode {image.mode}")
            return np.asarray(image, dtype=np.uint8)
    except RecordError:
        raise
    except Exception as exc:
        raise RecordError(f"mask cannot be decoded: {exc}") from None
