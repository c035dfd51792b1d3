"""Writes the template-browser thumbnail ``<workflow>.jpg`` next to each workflow of the catalogue in
``build_workflows.py``: a bundled sample photo, its left half degraded with the workflow's synthetic task
(``trajir.data.degrade``), the workflow's title on top.

Run from the repository root after ``build_workflows.py``: ``python workflows/make_thumbnails.py``.
"""
import pathlib
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from build_workflows import CATALOGUE
from trajir.data.degrade import degrade
from trajir.data.samples import FOLDER

SIZE = (384, 256)


def thumbnail(title, task, photo, seed=0):
    clean = Image.open(FOLDER / f"{photo}.png").convert("RGB")
    scale = max(SIZE[0] / clean.width, SIZE[1] / clean.height)
    clean = clean.resize((round(clean.width * scale), round(clean.height * scale)), Image.LANCZOS)
    left, top = (clean.width - SIZE[0]) // 2, (clean.height - SIZE[1]) // 2
    clean = clean.crop((left, top, left + SIZE[0], top + SIZE[1]))
    x = torch.from_numpy(np.asarray(clean, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    lq = degrade(task, x, seed)[0].permute(1, 2, 0).clamp(0, 1).mul(255).round().byte().numpy()
    out = np.asarray(clean).copy()
    out[:, : SIZE[0] // 2] = lq[:, : SIZE[0] // 2]
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    draw.line([(SIZE[0] // 2, 0), (SIZE[0] // 2, SIZE[1])], fill=(255, 255, 255), width=2)
    draw.rectangle([(0, 0), (SIZE[0], 22)], fill=(20, 20, 20))
    draw.text((6, 5), title, fill=(255, 255, 255))
    draw.text((6, SIZE[1] - 16), "LQ", fill=(255, 255, 255))
    draw.text((SIZE[0] // 2 + 6, SIZE[1] - 16), "clean", fill=(255, 255, 255))
    return image


def main():
    for name, _, _, (task, photo), _ in CATALOGUE:
        path = HERE / f"{name}.jpg"
        thumbnail(name, task, photo).save(path, quality=85, optimize=True)
        print(f"{path.name}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
