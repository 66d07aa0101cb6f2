"""Does the detector use brightness as a class cue? Per class, 40 images of a split list
are each moved whole to a mean gray level (clipped to 0-255), and the share whose own
class's highest heat reaches 0.3 is printed per level, beside their own level (model card,
"Brightness as a class cue"). The model runs in ONNX Runtime on the 224 x 224 padded
input, as `ap_by_iou.py` runs it. Usage:

    models/.venv/bin/python models/brightness_probe.py [model.onnx] [list] [split.json]

`list` is `train` (default) or `val` of the split file (default `models/neu_det.split.json`).
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort

from train import CLASSES, PATCH, load_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
SIDE, LEVELS, FOUND = 224, (None, 60, 100, 140, 180, 210), 0.3


def own_heat(sess, img, c):
    """The highest heat of class c inside the image."""
    h, w = img.shape
    pad = np.pad(img.astype(np.float32), ((0, SIDE - h), (0, SIDE - w)), mode="edge")
    g = SIDE // PATCH
    x = pad.reshape(g, PATCH, g, PATCH).transpose(1, 3, 0, 2).reshape(1, PATCH * PATCH, g, g)
    heat = sess.run(["heat"], {"patches": x})[0][0]
    return float(heat[c, :-(-h // 8), :-(-w // 8)].max())


def main():
    args = sys.argv[1:]
    sess = ort.InferenceSession(args[0] if args else os.path.join(HERE, "neu_det.onnx"))
    which = args[1] if len(args) > 1 else "train"
    split = args[2] if len(args) > 2 else os.path.join(HERE, "neu_det.split.json")
    names = {os.path.splitext(n)[0] for n in json.load(open(split))[which]}
    items = [it for it in load_dataset(os.path.join(HERE, "..", "..", "shared", "datasets", "neu"))
             if it["stem"] in names]
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        mine = [it for it in items if it["label"] == c]
        mine = [mine[i] for i in rng.choice(len(mine), min(40, len(mine)), replace=False)]
        row = []
        for level in LEVELS:
            heats = []
            for it in mine:
                img = it["img"].astype(np.float32)
                if level is not None:
                    img = np.clip(img + (level - img.mean()), 0, 255)
                heats.append(own_heat(sess, img, c))
            row.append(f"{'own' if level is None else level}: {np.mean(np.array(heats) >= FOUND):.0%}")
        print(f"{name:16s} " + "  ".join(row), flush=True)


if __name__ == "__main__":
    main()
