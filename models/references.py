#!/usr/bin/env python3
"""Write the parity references for a model: tile probabilities on the bundled samples.

Usage: python3 models/references.py [models/neu_tiles.onnx]
Needs: numpy, pillow, onnxruntime (models/requirements.txt).

train.py writes these from PyTorch at the end of training. This script writes them from
ONNX Runtime for an existing ONNX file, with the same tiling and normalisation as the
metadata says; tests/parity.rs then checks that inspectd's tract path reproduces them.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train import tile_positions  # noqa: E402  (one definition of the tiling)

model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "neu_tiles.onnx")
meta = json.load(open(os.path.splitext(model)[0] + ".json"))
tile, stride = meta["tiling"]["tile"], meta["tiling"]["stride"]
norm = meta["normalize"]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
images = []
for name in sorted(os.listdir(os.path.join(HERE, "samples"))):
    img = np.asarray(Image.open(os.path.join(HERE, "samples", name)).convert("L"), dtype=np.float32)
    h, w = img.shape
    pos = [(x, y) for y in tile_positions(h, tile, stride) for x in tile_positions(w, tile, stride)]
    x = np.stack([img[y:y + tile, x:x + tile] for x, y in pos])[:, None]
    x = ((x * norm["scale"] - norm["mean"]) / norm["std"]).astype(np.float32)
    probs = sess.run(None, {meta["input"]["name"]: x})[0]
    images.append({"image": f"samples/{name}", "tiles": [list(p) for p in pos], "probs": np.round(probs, 7).tolist()})
out = os.path.splitext(model)[0] + ".reference.json"
with open(out, "w") as f:
    json.dump({"model": meta["id"], "tolerance": 1e-4, "source": f"onnxruntime {ort.__version__}", "images": images}, f)
    f.write("\n")
print(f"wrote {out}: {len(images)} images")
