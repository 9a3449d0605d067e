"""Uploaded images: decoded and checked fully before anything is stored (type, truncation, bombs, limits)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from core.errors import InvalidRequestError, PayloadTooLargeError
from core.settings import Settings

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}


@dataclass(frozen=True)
class CheckedImage:
    media_type: str
    sha256: str
    data: bytes
    image: Image.Image


def decode_base64(value: str, index: int) -> bytes:
    if "," in value[:64] and value.startswith("data:"):
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            f"images[{index}] is not valid base64: send the PNG or JPEG file base64-encoded"
        ) from None


def check_image(data: bytes, index: int, settings: Settings) -> CheckedImage:
    """Open and fully decode one image, refusing anything but a complete PNG or JPEG within the limits."""
    where = f"images[{index}]"
    if not data:
        raise InvalidRequestError(f"{where} is empty")
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLargeError(f"{where} is {len(data)} bytes; the limit is {settings.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in FORMATS:
                raise InvalidRequestError(f"{where} is {image.format or 'not an image'}; send PNG or JPEG")
            width, height = image.size
            # Checked before decoding: a decompression bomb is small on the wire and huge in memory.
            if width * height > settings.max_image_pixels:
                raise PayloadTooLargeError(
                    f"{where} is {width}x{height} pixels; the limit is {settings.max_image_pixels} pixels"
                )
            image.load()
            rgb = image.convert("RGB")
    except (InvalidRequestError, PayloadTooLargeError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLargeError(f"{where} decompresses to too many pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidRequestError(f"{where} is not a complete PNG or JPEG image ({exc})") from None
    media = FORMATS[image.format]
    return CheckedImage(media, hashlib.sha256(data).hexdigest(), data, rgb)
