"""AP per class at IoU 0.3 / 0.5 / 0.7 on the TRAINING images of models/neu_det.split.json,
and how many truth boxes no detection of their class reaches at IoU 0.5: whether a class's
AP is lost to finding the defect or to fitting its box (model card, Known weaknesses).

The model runs in ONNX Runtime and is decoded as inspectd decodes it (3 x 3 peaks from
`model.min_score` 0.05, padding cells never peaks, boxes clipped to the image, suppression
at `model.nms_iou` 0.5), not as `train.py`'s validation does (its 50 highest peaks).
Boxes, IoU and AP are `train.py`'s. Usage:

    models/.venv/bin/python models/ap_by_iou.py [model.onnx]
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort

from train import CLASSES, PATCH, STRIDE, average_precision, iou, load_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
MIN_SCORE, NMS_IOU, SIDE = 0.05, 0.5, 224


def detections(sess, img):
    """(class, score, box) per kept peak of one 200 x 200 image, inspectd's decode."""
    h, w = img.shape
    pad = np.pad(img.astype(np.float32), ((0, SIDE - h), (0, SIDE - w)), mode="edge")
    g = SIDE // PATCH
    x = pad.reshape(g, PATCH, g, PATCH).transpose(1, 3, 0, 2).reshape(1, PATCH * PATCH, g, g)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"patches": x})))
    heat, box = outs["heat"][0], outs["box"][0]
    rows, cols = -(-h // STRIDE), -(-w // STRIDE)
    found = []
    for c in range(len(CLASSES)):
        live = heat[c, :rows, :cols]
        for yy, xx in zip(*np.nonzero(live >= MIN_SCORE)):
            v = live[yy, xx]
            if v < live[max(0, yy - 1):yy + 2, max(0, xx - 1):xx + 2].max():
                continue
            cx, cy = (xx + 0.5) * STRIDE, (yy + 0.5) * STRIDE
            l, t, r, b = box[:, yy, xx]
            found.append((c, float(v), [max(0, cx - l), max(0, cy - t), min(w, cx + r), min(h, cy + b)]))
    kept = []
    for d in sorted(found, key=lambda d: -d[1]):
        if not any(k[0] == d[0] and iou(k[2], d[2]) > NMS_IOU for k in kept):
            kept.append(d)
    return kept


def main():
    sess = ort.InferenceSession(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "neu_det.onnx"))
    train = {os.path.splitext(n)[0] for n in json.load(open(os.path.join(HERE, "neu_det.split.json")))["train"]}
    items = [it for it in load_dataset(os.path.join(HERE, "..", "..", "shared", "datasets", "neu"))
             if it["stem"] in train]
    dets, gts = [], {}
    for k, it in enumerate(items):
        gts[k] = it["boxes"]
        dets += [(c, k, s, b) for c, s, b in detections(sess, it["img"])]
    for c, name in enumerate(CLASSES):
        mine = [(k, s, b) for cc, k, s, b in dets if cc == c]
        aps = [average_precision(mine, gts, c, t) for t in (0.3, 0.5, 0.7)]
        best = np.array([max([iou(b, g[1:]) for k2, _, b in mine if k2 == k] or [0.0])
                         for k, boxes in gts.items() for g in boxes if g[0] == c])
        print(f"{name:16s} AP@0.3 {aps[0]:.3f}  AP@0.5 {aps[1]:.3f}  AP@0.7 {aps[2]:.3f}  | "
              f"{len(best)} boxes, best IoU median {np.median(best):.2f}, "
              f"none at 0.5 or more: {np.mean(best < 0.5):.2f}")


if __name__ == "__main__":
    main()
