"""A synthetic ImageNet-like image folder for the streaming memory check of
docs/log/2026-12-02-image-folder-streaming-memory.md: 1,000 class folders of
3 JPEGs each (500x375 RGB noise, quality 85).

    python3 scripts/image_folder_memtest.py /tmp/memtest-folder
"""
import os
import sys

import numpy as np
from PIL import Image

root = sys.argv[1]
rng = np.random.default_rng(0)
for c in range(1000):
    d = os.path.join(root, f"n{c:05d}")
    os.makedirs(d, exist_ok=True)
    for k in range(3):
        a = (rng.random((375, 500, 3)) * 255).astype("uint8")
        a[::7] //= 2
        Image.fromarray(a).save(os.path.join(d, f"{k}.jpg"), quality=85)
