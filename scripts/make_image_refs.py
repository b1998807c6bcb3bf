#!/usr/bin/env python3
"""Image-preprocessing fixtures for tests/image_preprocess.rs.

Writes small test images with Pillow into tests/fixtures/images/, runs transformers'
`PixtralImageProcessorPil` (the PIL backend of the Pixtral processor; the torchvision backend
is not installed in the reference venv) configured as `PixtralProcessor` drives it for
Mistral 3: patch_size = 14 * spatial_merge_size 2 = 28, `longest_edge` = max_edge, and saves
each expected `pixel_values[0]` as float32 `<name>.npy` ([3, H, W]) plus `cases.json`.

Reference behaviour recorded here (and mirrored in src/image/):
- EXIF: the image processor ignores EXIF; `transformers.image_utils.load_image` (used for
  paths / URLs) applies `PIL.ImageOps.exif_transpose`. The expectation for the EXIF JPEG is
  therefore made from the transposed image, as `load_image` would give it.
- Alpha: `convert_to_rgb` composites RGBA (and palette/`transparency`) onto opaque white
  with `Image.alpha_composite`.
- 16-bit gray: Pillow's `I;16` -> RGB clamps values to 255; webvlm rounds `v / 257` instead,
  so that expectation is built from the rounded 8-bit image (a deliberate difference).

Run: /work/pyref/bin/python scripts/make_image_refs.py
"""

import io
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps
from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "images")
DEFAULT_MAX_EDGE = 1540


def pattern(w, h, channels, seed):
    """Smooth gradients plus mild noise: exercises filters but compresses well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        p = 127.5 + 90 * np.sin(x / (5.0 + 3 * c) + c) * np.cos(y / (7.0 + 2 * c))
        p += 30 * ((x + 2 * y + 11 * c) % 23 < 4)
        p += rng.normal(0, 3, size=(h, w))
        planes.append(p)
    return np.clip(np.stack(planes, -1), 0, 255).round().astype(np.uint8)


def processor(max_edge):
    return PixtralImageProcessorPil(patch_size={"height": 28, "width": 28}, size={"longest_edge": max_edge})


def expected(img, max_edge):
    out = processor(max_edge)(img, return_tensors="np")["pixel_values"][0]
    return np.ascontiguousarray(out.astype(np.float32))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(side):
    """A valid 1-bit grayscale PNG of side x side zero pixels (~side^2/8 bytes decoded)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_zero_width():
    ihdr = struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []

    def case(name, src_img, max_edge, note, tolerance="exact"):
        arr = expected(src_img, max_edge)
        np.save(os.path.join(OUT, name.rsplit(".", 1)[0] + ".npy"), arr)
        cases.append({"file": name, "max_edge": max_edge, "shape": list(arr.shape), "tolerance": tolerance,
                      "note": note})

    def save(name, img, **kw):
        img.save(os.path.join(OUT, name), **kw)
        return Image.open(os.path.join(OUT, name))

    # 1. RGB, sides already multiples of 28: no resize at all.
    im = save("rgb_56x84.png", Image.fromarray(pattern(56, 84, 3, 1), "RGB"))
    case("rgb_56x84.png", im, DEFAULT_MAX_EDGE, "RGB, no resize")

    # 2. RGBA with alpha 0..255: composited on white, then upscaled 100x60 -> 112x84.
    rgba = pattern(100, 60, 4, 2)
    rgba[..., 3] = np.clip(np.linspace(0, 255, 100)[None, :] + 0 * rgba[..., 0], 0, 255).astype(np.uint8)
    rgba[:10, :10, 3] = 0
    im = save("rgba_100x60.png", Image.fromarray(rgba, "RGBA"))
    case("rgba_100x60.png", im, DEFAULT_MAX_EDGE, "RGBA on white, upscaled to multiples of 28")

    # 3. Palette PNG with a transparent index (tRNS): 70x42 -> 84x56.
    pal = Image.fromarray(pattern(70, 42, 3, 3), "RGB").quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    pal.info["transparency"] = 0
    im = save("palette_70x42.png", pal, transparency=0)
    case("palette_70x42.png", im, DEFAULT_MAX_EDGE, "palette with transparent index, upscaled")

    # 4. 16-bit grayscale, 56x56: expectation from round(v / 257) (Pillow would clamp to 255).
    g16 = (pattern(56, 56, 1, 4)[..., 0].astype(np.uint32) * 257 + np.arange(56)[None, :] * 3).clip(0, 65535)
    g16 = g16.astype(np.uint16)
    Image.fromarray(g16).save(os.path.join(OUT, "gray16_56x56.png"))
    g8 = Image.fromarray(((g16.astype(np.uint32) + 128) // 257).astype(np.uint8), "L")
    case("gray16_56x56.png", g8, DEFAULT_MAX_EDGE, "16-bit gray; expectation rounds v/257, Pillow clamps")

    # 5. JPEG stored 84 wide x 56 high with EXIF orientation 6: upright it is 56 x 84.
    exif = Image.Exif()
    exif[0x0112] = 6
    im = save("exif6_84x56.jpg", Image.fromarray(pattern(84, 56, 3, 5), "RGB"), quality=95, subsampling=0,
              exif=exif.tobytes())
    case("exif6_84x56.jpg", ImageOps.exif_transpose(im), DEFAULT_MAX_EDGE,
         "EXIF 6 applied as load_image does; JPEG decoders differ (libjpeg-turbo vs zune-jpeg)", "jpeg")

    # 6. Lossless WebP, no resize.
    im = save("lossless_84x56.webp", Image.fromarray(pattern(84, 56, 3, 6), "RGB"), lossless=True)
    case("lossless_84x56.webp", im, DEFAULT_MAX_EDGE, "lossless WebP, no resize")

    # 7. Two-frame GIF: only the first frame counts.
    f0 = Image.fromarray(pattern(56, 56, 3, 7), "RGB").quantize(colors=64)
    f1 = Image.fromarray(255 - pattern(56, 56, 3, 8), "RGB").quantize(colors=64)
    f0.save(os.path.join(OUT, "anim_2frames_56x56.gif"), save_all=True, append_images=[f1], duration=100, loop=0)
    im = Image.open(os.path.join(OUT, "anim_2frames_56x56.gif"))
    assert getattr(im, "n_frames", 1) == 2
    case("anim_2frames_56x56.gif", im, DEFAULT_MAX_EDGE, "first GIF frame, no resize")

    # 8. Downscaling with a small max_edge: 300x200 -> (74 -> 84) x 112; and 130x181 -> 84x84.
    im = save("rgb_300x200.png", Image.fromarray(pattern(300, 200, 3, 9), "RGB"))
    case("rgb_300x200.png", im, 112, "downscale with longest_edge 112")
    im = save("rgb_130x181.png", Image.fromarray(pattern(130, 181, 3, 10), "RGB"))
    case("rgb_130x181.png", im, 84, "downscale with longest_edge 84 (portrait, factor 2.15)")

    # Bad inputs.
    with open(os.path.join(OUT, "bomb_30000.png"), "wb") as f:
        f.write(png_bomb(30000))
    with open(os.path.join(OUT, "zero_width.png"), "wb") as f:
        f.write(png_zero_width())
    Image.fromarray(pattern(8, 8, 3, 11), "RGB").save(os.path.join(OUT, "tiny.bmp"))
    Image.fromarray(pattern(8, 8, 3, 12), "RGB").save(os.path.join(OUT, "tiny.tiff"))

    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f, indent=1)
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{len(cases)} cases, {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
