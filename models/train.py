#!/usr/bin/env python3
"""Train inspectd's steel-surface defect detector on the NEU database and export it.

The model is fully convolutional: it takes a whole gray frame (any size that is a
multiple of 32) and predicts, on a grid of 8-px cells,
  - `heat`: per defect class, the probability that a defect's centre lies in the cell;
  - `box`:  the distances in pixels from the cell's centre to the left, top, right and
            bottom edges of the defect centred there.
A defect is a local maximum of `heat` (3x3) above its class threshold, and its box is
read from `box` at the same cell (CenterNet's peaks, TTFNet's training targets: a
Gaussian heat map per box, box regression with a GIoU loss at the cells around its
centre). inspectd decodes exactly this (classify.rs); nothing else is needed, no NMS.

Usage (from the repository root):
    python3 -m venv models/.venv && models/.venv/bin/pip install -r models/requirements.txt
    models/.venv/bin/python models/train.py --dataset ../shared/datasets/neu --seed 1

Writes into --out (default: next to this script):
    neu_det.onnx            the model (input [1,64,H/8,W/8]: the frame's 8x8 patches, raw
                            gray levels 0..255 as float; outputs heat [1,6,H/8,W/8],
                            box [1,4,H/8,W/8], image [1,7] (six classes and `none`) and
                            area [1,7,H/32,W/32] (the image head on every 224 px window))
    neu_det.pt              its PyTorch weights (not committed)
    neu_det.json            the metadata inspectd reads (labels, input, normalisation,
                            outputs, id, sha256, training)
    neu_det.split.json      which images were trained on and which were held out
    neu_det.reference.json  PyTorch's outputs for the bundled sample images (parity test)
    neu_det.metrics.<seed>.json  validation metrics measured here in PyTorch
    samples/                a few held-out images, for the demo and the parity test
"""
import argparse
import copy
import hashlib
import json
import math
import os
import random
import shutil
import time
import xml.etree.ElementTree as ET

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

CLASSES = ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
STRIDE = 8
MULTIPLE = 32
SIDE = 224  # NEU's 200 px padded to the next multiple of 32, as inspectd pads a frame
HERE = os.path.dirname(os.path.abspath(__file__))
# The split stays the one the tile model used: the same 300 images are held out.
SPLIT_SEED = 20261128
# The whole-image head's seventh outcome: defect-free surface.
NONE = len(CLASSES)
# Defect-free crops keep this many pixels from every box (hand-drawn boxes are loose),
# and come in these sides, largest first (inspectd's eval cuts its own the same way).
CLEAN_MARGIN = 8
CLEAN_SIDES = (160, 128, 96, 64, 48)


def read_boxes(xml_path):
    """Pascal VOC boxes as (class, x0, y0, x1, y1), 0-based, end-exclusive."""
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        name = obj.findtext("name").strip()
        bb = obj.find("bndbox")
        x0, y0 = float(bb.findtext("xmin")) - 1, float(bb.findtext("ymin")) - 1
        x1, y1 = float(bb.findtext("xmax")), float(bb.findtext("ymax"))
        boxes.append((CLASSES.index(name), max(x0, 0.0), max(y0, 0.0), x1, y1))
    return boxes


def load_dataset(root):
    items = []
    for fname in sorted(os.listdir(os.path.join(root, "IMAGES"))):
        stem, _ = os.path.splitext(fname)
        img = np.asarray(Image.open(os.path.join(root, "IMAGES", fname)).convert("L"), dtype=np.uint8)
        items.append({"file": fname, "stem": stem, "label": CLASSES.index(stem.rsplit("_", 1)[0]),
                      "img": img, "boxes": read_boxes(os.path.join(root, "ANNOTATIONS", stem + ".xml"))})
    return items


def stratified_split(items, val_share, seed):
    rng = random.Random(seed)
    train, val = [], []
    for c in range(len(CLASSES)):
        group = [it for it in items if it["label"] == c]
        rng.shuffle(group)
        n_val = int(round(len(group) * val_share))
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def split(items, val_share, inner_val=False):
    """(train, val): the held-out split (seed SPLIT_SEED); with `inner_val`, a screen's
    split instead, a share of the training images held out of training and validated
    on, the held-out images left out of both."""
    train, val = stratified_split(items, val_share, SPLIT_SEED)
    if inner_val:
        train, val = stratified_split(train, val_share, SPLIT_SEED + 1)
    return train, val


def subset(items, share):
    """A share of `items`, per class, the first of one fixed shuffle (seed SPLIT_SEED + 2):
    the same images whatever the training seed, and each smaller share inside the larger,
    so a learning curve compares more images of the same kind, not other images."""
    kept = []
    for c in range(len(CLASSES)):
        group = [it for it in items if it["label"] == c]
        random.Random(SPLIT_SEED + 2).shuffle(group)
        kept += group[:max(1, int(round(len(group) * share)))]
    return kept


def pixel_stats(items):
    """The mean and standard deviation of the images' gray levels, on a 0-1 scale."""
    pixels = np.concatenate([it["img"].ravel() for it in items]).astype(np.float64) / 255.0
    return float(pixels.mean()), float(pixels.std())


def pad_to(img, side, ox=0, oy=0):
    """The image at (ox, oy) in a side x side canvas, edges repeated outward (as inspectd
    pads a frame to a multiple of 32)."""
    h, w = img.shape
    return np.pad(img, ((oy, side - h - oy), (ox, side - w - ox)), mode="edge")


def rescaled(img, boxes, rng, share, lo, hi):
    """With probability `share`, the image and its boxes scaled by a factor drawn from
    [lo, hi] (bilinear; at most the canvas): the same defect at another size, which the
    fixed camera of NEU never shows but a line's other pitch or lens does."""
    if share <= 0 or rng.random() >= share:
        return img, boxes
    h, w = img.shape
    s = min(rng.uniform(lo, hi), SIDE / w, SIDE / h)
    nw, nh = max(16, round(w * s)), max(16, round(h * s))
    img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((nw, nh), Image.BILINEAR))
    fx, fy = nw / w, nh / h
    return img, [[c, x0 * fx, y0 * fy, x1 * fx, y1 * fy] for c, x0, y0, x1, y1 in boxes]


# `--level-share`: the share of training inputs whose mean gray is first moved to a level
# drawn from LEVELS. NEU's classes differ in brightness (pitted surface's images average
# 176, scratches' 95), so a net can learn brightness as a class cue; on a line the
# strip's brightness is the lamp's, and a scratch on bright strip is still a scratch.
LEVEL_SHARE, LEVELS = 0.0, (50.0, 210.0)
# `--no-turns`: inputs are mirrored but never turned by 90 degrees, so the strip keeps the
# orientation the camera gives it (the daemon's strip moves up the image; NEU's
# inclusions, drawn out by rolling, lie along its columns). NEU's boxes have one:
# crazing's bands lie across the image (362 of its 571 boxes are wider than 1.5 x their
# height, 28 taller), inclusions along it (757 of 844 taller); turned inputs ask the net
# to learn each convention twice.
TURNS = True


def lighting(img, rng):
    """The line's lamp and gain drift (gain 0.8-1.2, offset +-20 gray levels), after, for
    `LEVEL_SHARE` of the inputs, a move of the whole image to another mean level."""
    if LEVEL_SHARE > 0 and rng.random() < LEVEL_SHARE:
        img = img + (rng.uniform(*LEVELS) - float(img.mean()))
    return np.clip(img * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255)


def augment(img, boxes, rng, place=True, scale=(0.0, 1.0, 1.0)):
    """Turns (unless `TURNS` is off: NEU's boxes have an orientation, above), flips, a
    shift inside the padded canvas, lighting drift, and with `scale` (share, lo, hi) a
    change of size. With `place` off, the image stays at its own size (for a mosaic)."""
    img, boxes = rescaled(img, boxes, rng, *scale)
    h, w = img.shape
    boxes = [list(b) for b in boxes]
    for _ in range(rng.randrange(4) if TURNS else 0):  # 90 degrees counter-clockwise
        img = np.rot90(img)
        boxes = [[c, y0, w - x1, y1, w - x0] for c, x0, y0, x1, y1 in boxes]
        h, w = w, h
    if rng.random() < 0.5:
        img = img[:, ::-1]
        boxes = [[c, w - x1, y0, w - x0, y1] for c, x0, y0, x1, y1 in boxes]
    if rng.random() < 0.5:
        img = img[::-1, :]
        boxes = [[c, x0, h - y1, x1, h - y0] for c, x0, y0, x1, y1 in boxes]
    if place:
        ox, oy = rng.randrange(SIDE - w + 1), rng.randrange(SIDE - h + 1)
        img = pad_to(np.ascontiguousarray(img), SIDE, ox, oy).astype(np.float32)
    else:
        ox, oy = 0, 0
        img = np.ascontiguousarray(img).astype(np.float32)
    img = lighting(img, rng)
    boxes = [[c, x0 + ox, y0 + oy, x1 + ox, y1 + oy] for c, x0, y0, x1, y1 in boxes]
    return img, boxes


def mosaic(items, rng, seam=12, placed=False):
    """Four training images in one 224 x 224 input, at their own scale (the camera's pixel
    pitch does not change): a random split point, each quarter a window of a different
    image (turned, mirrored, its own lighting drift), the quarters cross-faded over `seam`
    px so no hard edge is learnt. Boxes are clipped to their quarter; a box of which less
    than 30 % is left is dropped and its visible part is returned as `ignore` (neither
    defect nor clean for the heat loss). The image label is each class's share of the
    canvas (a soft target). With `placed`, the mosaic is 200 x 200 and placed in the
    224 x 224 input like an image (edges repeated), so its defects do not touch the
    input's border any more often than an image's do."""
    side = 200 if placed else SIDE
    cx, cy = rng.randrange(side // 4, side * 3 // 4 + 1), rng.randrange(side // 4, side * 3 // 4 + 1)
    half = seam // 2
    ramp_len = np.arange(side, dtype=np.float32)
    acc = np.zeros((side, side), np.float32)
    wsum = np.zeros((side, side), np.float32)
    boxes, ignore = [], []
    label = np.zeros(len(CLASSES) + 1, np.float32)
    for qx, qy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        it = items[rng.randrange(len(items))]
        x0q, x1q = (0, cx) if qx == 0 else (cx, side)
        y0q, y1q = (0, cy) if qy == 0 else (cy, side)
        # The window, widened by half a seam on the inner sides for the cross-fade.
        wx0, wx1 = max(x0q - half, 0), min(x1q + half, side)
        wy0, wy1 = max(y0q - half, 0), min(y1q + half, side)
        img, bxs = augment(it["img"], it["boxes"], rng, place=False)
        h, w = img.shape
        ox, oy = rng.randrange(w - (wx1 - wx0) + 1), rng.randrange(h - (wy1 - wy0) + 1)
        # The share of the right (lower) quarters: 0 to 1 across the seam.
        fx = np.clip((ramp_len[wx0:wx1] + 0.5 - cx) / seam + 0.5, 0, 1)
        fy = np.clip((ramp_len[wy0:wy1] + 0.5 - cy) / seam + 0.5, 0, 1)
        fx = fx if qx == 1 else 1 - fx
        fy = fy if qy == 1 else 1 - fy
        acc_w = (fy[:, None] * fx[None, :]) + 1e-6
        acc[wy0:wy1, wx0:wx1] += img[oy:oy + wy1 - wy0, ox:ox + wx1 - wx0] * acc_w
        wsum[wy0:wy1, wx0:wx1] += acc_w
        label[it["label"]] += (x1q - x0q) * (y1q - y0q) / (side * side)
        for c, bx0, by0, bx1, by1 in bxs:
            # Into canvas coordinates, then clipped to the quarter.
            bx0, bx1 = bx0 - ox + wx0, bx1 - ox + wx0
            by0, by1 = by0 - oy + wy0, by1 - oy + wy0
            kx0, ky0, kx1, ky1 = max(bx0, x0q), max(by0, y0q), min(bx1, x1q), min(by1, y1q)
            if kx1 - kx0 < 1 or ky1 - ky0 < 1:
                continue
            if (kx1 - kx0) * (ky1 - ky0) >= 0.3 * (bx1 - bx0) * (by1 - by0):
                boxes.append([c, kx0, ky0, kx1, ky1])
            else:
                ignore.append((kx0, ky0, kx1, ky1))
    img = np.clip(acc / wsum, 0, 255)
    if placed:
        ox, oy = rng.randrange(SIDE - side + 1), rng.randrange(SIDE - side + 1)
        img = pad_to(img, SIDE, ox, oy)
        boxes = [[c, x0 + ox, y0 + oy, x1 + ox, y1 + oy] for c, x0, y0, x1, y1 in boxes]
        ignore = [(x0 + ox, y0 + oy, x1 + ox, y1 + oy) for x0, y0, x1, y1 in ignore]
    return img, boxes, ignore, label


def laid(items, crops, rng, feather=12.0):
    """A window of a defect image laid into a defect-free input, as a defect lies on a
    strip that is clean around it: a window (64 to 200 px a side) of a training image,
    turned and mirrored, holding the centre of one of its boxes, is laid at a random
    place on a negative (`negative`), its gray level moved to the mean of the surface
    under it and its border cross-faded over `feather` px (as inspectd eval lays images).
    Boxes are clipped to the window; a box of which less than half is left becomes
    `ignore`. The image label is the window's share of the input for its class, the rest
    `none`."""
    it = items[rng.randrange(len(items))]
    img, bxs = augment(it["img"], it["boxes"], rng, place=False)
    h, w = img.shape
    c0, x0, y0, x1, y1 = bxs[rng.randrange(len(bxs))]
    ww, wh = rng.randint(min(64, w), w), rng.randint(min(64, h), h)
    # The window's corner, so that the box's centre is inside it.
    bcx, bcy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    ox = rng.randint(max(0, bcx - ww + 1), min(w - ww, bcx))
    oy = rng.randint(max(0, bcy - wh + 1), min(h - wh, bcy))
    win = img[oy:oy + wh, ox:ox + ww]
    canvas = negative(crops, rng)
    px, py = rng.randrange(SIDE - ww + 1), rng.randrange(SIDE - wh + 1)
    under = canvas[py:py + wh, px:px + ww]
    ex, ey = np.arange(ww), np.arange(wh)
    edge = np.minimum(np.minimum(ey, wh - 1 - ey)[:, None], np.minimum(ex, ww - 1 - ex)[None, :]) + 0.5
    a = np.minimum(edge.astype(np.float32) / feather, 1.0)
    moved = np.clip(win + (under.mean() - win.mean()), 0, 255)
    canvas[py:py + wh, px:px + ww] = a * moved + (1 - a) * under
    boxes, ignore = [], []
    for c, bx0, by0, bx1, by1 in bxs:
        kx0, ky0, kx1, ky1 = max(bx0, ox), max(by0, oy), min(bx1, ox + ww), min(by1, oy + wh)
        if kx1 - kx0 < 1 or ky1 - ky0 < 1:
            continue
        shifted = (kx0 - ox + px, ky0 - oy + py, kx1 - ox + px, ky1 - oy + py)
        if (kx1 - kx0) * (ky1 - ky0) >= 0.5 * (bx1 - bx0) * (by1 - by0):
            boxes.append([c, *shifted])
        else:
            ignore.append(shifted)
    label = np.zeros(len(CLASSES) + 1, np.float32)
    label[it["label"]] = ww * wh / (SIDE * SIDE)
    label[NONE] = 1.0 - label[it["label"]]
    return canvas.astype(np.float32), boxes, ignore, label


def clean_crops(items):
    """Defect-free surface: per class of image, square crops wholly outside every box
    (CLEAN_MARGIN px from each), the largest sides first, not overlapping each other."""
    crops = {c: [] for c in range(len(CLASSES))}
    for it in items:
        img = it["img"]
        h, w = img.shape
        blocked = np.zeros((h, w), bool)
        for _, x0, y0, x1, y1 in it["boxes"]:
            blocked[max(int(y0) - CLEAN_MARGIN, 0):int(math.ceil(y1)) + CLEAN_MARGIN,
                    max(int(x0) - CLEAN_MARGIN, 0):int(math.ceil(x1)) + CLEAN_MARGIN] = True
        for side in CLEAN_SIDES:
            y = 0
            while y + side <= h:
                x, took = 0, False
                while x + side <= w:
                    if not blocked[y:y + side, x:x + side].any():
                        crops[it["label"]].append(img[y:y + side, x:x + side].copy())
                        blocked[y:y + side, x:x + side] = True
                        took = True
                        x += side
                    else:
                        x += 8
                y += side if took else 8
    return crops


def turned(img, rng):
    """A crop turned by a multiple of 90 degrees and mirrored at random; with `TURNS`
    off, mirrored top-bottom and left-right at random instead (keeping its orientation)."""
    if TURNS:
        for _ in range(rng.randrange(4)):
            img = np.rot90(img)
    elif rng.random() < 0.5:
        img = img[::-1, :]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def surface(pool, side, rng):
    """A side x side defect-free surface from crops of one surface (one class's images, one
    crop size): tiles overlapping by a quarter, cross-faded with linear ramps, each turned
    or mirrored and shifted to one mean gray, so there is no hard seam to learn from."""
    t = pool[0].shape[0]
    o = max(t // 4, 1)
    pitch = t - o
    edge = np.minimum(np.arange(t) + 0.5, t - np.arange(t) - 0.5)
    ramp = np.minimum(edge / o, 1.0).astype(np.float32)
    weight = ramp[:, None] * ramp[None, :] + 1e-4
    level = float(pool[rng.randrange(len(pool))].mean())
    n = (side + 2 * pitch) // pitch + 1
    big = n * pitch + o
    acc = np.zeros((big, big), np.float32)
    wsum = np.zeros((big, big), np.float32)
    for j in range(n):
        for i in range(n):
            c = turned(pool[rng.randrange(len(pool))], rng).astype(np.float32)
            c += level - c.mean()
            acc[j * pitch:j * pitch + t, i * pitch:i * pitch + t] += c * weight
            wsum[j * pitch:j * pitch + t, i * pitch:i * pitch + t] += weight
    oy, ox = rng.randrange(pitch), rng.randrange(pitch)
    return np.clip(acc / wsum, 0, 255)[oy:oy + side, ox:ox + side]


def negative(crops, rng):
    """One defect-free training input, 224 x 224: 30 % one crop placed and padded like an
    image (edges repeated), 70 % a cross-faded surface of crops of one class's images.
    Then the lighting drift every image gets."""
    groups = [c for c, v in crops.items() if v]
    pool = crops[groups[rng.randrange(len(groups))]]
    if rng.random() < 0.3:
        big = [c for c in pool if c.shape[0] >= 96] or pool
        crop = turned(big[rng.randrange(len(big))], rng)
        s = crop.shape[0]
        img = pad_to(crop, SIDE, rng.randrange(SIDE - s + 1), rng.randrange(SIDE - s + 1)).astype(np.float32)
    else:
        side = pool[rng.randrange(len(pool))].shape[0]
        img = surface([c for c in pool if c.shape[0] == side], SIDE, rng)
    return lighting(img, rng).astype(np.float32)


def targets(boxes, side, widths, pos_gauss=1.0, reg_floor=0.3):
    """TTFNet targets on the side/8 grid: a Gaussian per box on its class's heat map
    (sigma from the box's size and its class's entry in `widths`, TTFNet's alpha, so a
    long scratch gets a long ellipse), and box
    regression weights around each centre (Gaussian, summing to log(area) per box, the
    smaller box winning a shared cell). With `pos_gauss` below 1, every cell inside the
    box where the Gaussian reaches it is a positive too (a centre region, not one peak).
    Boxes are regressed at the cells inside the box where the Gaussian exceeds `reg_floor`
    (0.3: its core; lower reaches the cells further out, whose boxes every-cell decoding
    also reads)."""
    g = side // STRIDE
    heat = np.zeros((len(CLASSES), g, g), np.float32)
    reg = np.zeros((4, g, g), np.float32)
    weight = np.zeros((g, g), np.float32)
    owner_area = np.full((g, g), np.inf, np.float32)
    ys, xs = np.mgrid[0:g, 0:g].astype(np.float32)
    for c, x0, y0, x1, y1 in sorted(boxes, key=lambda b: -(b[3] - b[1]) * (b[4] - b[2])):
        bw, bh = x1 - x0, y1 - y0
        if bw < 1 or bh < 1:
            continue
        cx, cy = (x0 + x1) / 2 / STRIDE - 0.5, (y0 + y1) / 2 / STRIDE - 0.5
        sx, sy = max(widths[c] * bw / 6 / STRIDE, 0.5), max(widths[c] * bh / 6 / STRIDE, 0.5)
        gauss = np.exp(-((xs - cx) ** 2 / (2 * sx * sx) + (ys - cy) ** 2 / (2 * sy * sy)))
        ix, iy = min(max(int(round(cx)), 0), g - 1), min(max(int(round(cy)), 0), g - 1)
        gauss[iy, ix] = 1.0
        if pos_gauss < 1.0:
            ccx, ccy = (xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE
            core = (gauss >= pos_gauss) & (ccx > x0) & (ccx < x1) & (ccy > y0) & (ccy < y1)
            gauss[core] = 1.0
        heat[c] = np.maximum(heat[c], gauss)
        # Regression at the cells inside the box where the Gaussian exceeds `reg_floor`.
        ccx, ccy = (xs + 0.5) * STRIDE, (ys + 0.5) * STRIDE
        inside = (ccx > x0) & (ccx < x1) & (ccy > y0) & (ccy < y1) & (gauss > reg_floor)
        inside[iy, ix] = True
        area = bw * bh
        take = inside & (area <= owner_area)
        if not take.any():
            continue
        w = gauss * take
        w = w / w.sum() * math.log(area)
        owner_area[take] = area
        reg[:, take] = np.array([x0, y0, x1, y1], np.float32)[:, None]
        weight[take] = w[take]
    return heat, reg, weight


# Designs measured (model card): channel widths per level and convolutions per level.
DESIGNS = {
    # Today's tile net's widths, head on 8x8 patches: 3x3 only at 1/16 and 1/32.
    "small": {"c8": 64, "c16": 128, "c32": 128, "n16": 1, "n32": 2, "head": 64},
    # Deeper at 1/16 and wider at 1/32 (where tract's kernels run best), same 1/8 cost.
    "deep": {"c8": 64, "c16": 128, "c32": 160, "n16": 2, "n32": 2, "head": 64},
    # Half the multiply-adds: 3x3 convolutions split into depthwise 3x3 + pointwise 1x1
    # (residual) at 1/16 and 1/32, one block more at each, wider at 1/32, a thinner 1/8
    # level (its maps are the largest: tract's cost there is packing, not arithmetic).
    "lite": {"c8": 32, "c16": 128, "c32": 256, "n16": 3, "n32": 3, "head": 48, "block": "sep"},
    # "deep" with a spatial pyramid of max pools at 1/32 (YOLOv5's SPPF): every cell sees
    # the whole frame's 1/32 features up to 13 cells (416 px) away, for textures that
    # fill an image. About 82 M multiply-adds more per 1280x1024 frame (2.8 %).
    "deep_sppf": {"c8": 64, "c16": 128, "c32": 160, "n16": 2, "n32": 2, "head": 64, "context": "sppf"},
    # "deep" with a separable 3x3 block on the merged 1/8 map before the head: the box's
    # edges read from a cell's neighbours (24 px), not from that cell and the upsampled
    # coarse maps alone; no wider context (SPPF's lesson: context that sees a frame of
    # clean surface hides a small defect in it).
    "deep_sep8": {"c8": 64, "c16": 128, "c32": 160, "n16": 2, "n32": 2, "head": 64, "ctx8": "sep"},
    # "deep" with more at 1/32, the level that judges a texture over a whole 200 px
    # image (crazing, rolled-in scale): 192 channels and three 3x3 convolutions. The 1/32
    # map has a sixteenth of the 1/8 map's cells, so capacity there is cheap per frame.
    "deep_w32": {"c8": 64, "c16": 128, "c32": 192, "n16": 2, "n32": 3, "head": 64},
    # "deep" with a wider 1/8 level (96 channels, 64): more of an 8 x 8 patch's texture
    # kept past the patchify stem, where crazing's fine cracks are seen.
    "deep_s96": {"c8": 96, "c16": 128, "c32": 160, "n16": 2, "n32": 2, "head": 64},
    # "deep" with the last 3x3 convolution at 1/16 and at 1/32 dilated by 2 (the issue's
    # "dilated convolutions"): the same weights and multiply-adds, each of those layers
    # seeing 5 x 5 cells (80 and 160 px) instead of 3 x 3, for the extent of a texture
    # that fills an image, without SPPF's frame-wide pooling.
    "deep_dil": {"c8": 64, "c16": 128, "c32": 160, "n16": 2, "n32": 2, "head": 64, "dilate": 2},
    # "deep" with each box edge read as a distribution (GFL's distribution focal loss): per
    # edge, 16 logits over log-distances from 0.4 to 265 px, the distance their softmax's
    # expectation; an edge the net is unsure of is taught as two neighbouring bins, not a
    # point. The exported graph folds the expectation in: `box` keeps its shape and meaning.
    "deep_dfl": {"c8": 64, "c16": 128, "c32": 160, "n16": 2, "n32": 2, "head": 64, "dfl": 16},
}
DFL_RANGE = (-3.0, 3.5)  # log(distance / STRIDE) of the first and last bin
PATCH = 8  # the first layer sees 8x8 pixel patches (space-to-depth, done by inspectd)


class SepBlock(nn.Module):
    """A 3x3 convolution split in two: depthwise 3x3 then pointwise 1x1, each with batch
    norm, ReLU after the sum with the block's input (a residual block). About a ninth of
    a full 3x3's multiply-adds at 128 channels."""

    def __init__(self, c):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.BatchNorm2d(c),
                                nn.ReLU(inplace=True))
        self.pw = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.pw(self.dw(x)))


class SPPF(nn.Module):
    """1x1 down to half the channels, three chained 5x5 max pools (stride 1), the four
    maps concatenated and a 1x1 back: a receptive field of 13 cells at almost no cost."""

    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.cv1 = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(inplace=True))
        self.cv2 = nn.Sequential(nn.Conv2d(4 * h, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        a = self.cv1(x)
        b = self.pool(a)
        c = self.pool(b)
        return self.cv2(torch.cat([a, b, c, self.pool(c)], 1))


class Detector(nn.Module):
    """A patchify stem (8x8 patches in, as 64 channels: inspectd rearranges the frame, so
    the network starts with a 1x1 convolution, a matrix product tract runs fast), strided
    2x2 convolutions down to 1/32, 3x3 convolutions only at 1/16 and 1/32 (small maps,
    many channels: where tract's kernels do well; anchors/README) for a receptive field
    past 200 px, a top-down path back to 1/8 with 2x2 transposed convolutions, and 1x1
    convolutions for the outputs."""

    def __init__(self, design="small"):
        super().__init__()
        d = DESIGNS[design]
        c8, c16, c32, ch = d["c8"], d["c16"], d["c32"], d["head"]

        def cbr(cin, cout, k, s, p=0, dilation=1):
            return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, dilation=dilation, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        def block(c, last=False):
            if d.get("block") == "sep":
                return SepBlock(c)
            k = d.get("dilate", 1) if last else 1
            return cbr(c, c, 3, 1, k, dilation=k)

        def level(c, n):
            return [block(c, last=i == n - 1) for i in range(n)]

        self.s8 = nn.Sequential(cbr(PATCH * PATCH, c8, 1, 1), cbr(c8, c8, 1, 1))
        self.s16 = nn.Sequential(cbr(c8, c16, 2, 2), *level(c16, d["n16"]))
        context = [SPPF(c32)] if d.get("context") == "sppf" else []
        self.s32 = nn.Sequential(cbr(c16, c32, 2, 2), *level(c32, d["n32"]), *context)
        self.up32 = nn.Sequential(nn.ConvTranspose2d(c32, c16, 2, 2, bias=False), nn.BatchNorm2d(c16))
        self.up16 = nn.Sequential(nn.ConvTranspose2d(c16, c8, 2, 2, bias=False), nn.BatchNorm2d(c8))
        self.ctx8 = SepBlock(c8) if d.get("ctx8") == "sep" else nn.Identity()
        self.head = cbr(c8, ch, 1, 1)
        self.heat = nn.Conv2d(ch, len(CLASSES), 1)
        self.bins = d.get("dfl", 0)
        self.box = nn.Conv2d(ch, 4 * self.bins if self.bins else 4, 1)
        self.image = nn.Linear(c32, len(CLASSES) + 1)  # the classes and `none`
        nn.init.constant_(self.heat.bias, -4.6)  # start near p = 0.01 (focal-loss prior)
        nn.init.constant_(self.box.bias, 0.0 if self.bins else math.log(4.0))
        if self.bins:
            self.register_buffer("levels", torch.linspace(*DFL_RANGE, self.bins))
        self.box_logits = None  # the last forward's per-edge bin logits (designs with "dfl")

    def distances(self, h):
        """The box output: per cell, the distances in pixels to the four edges; with bins,
        each the exponential of its bins' expected log-distance (kept in `box_logits`)."""
        raw = self.box(h)
        if not self.bins:
            return torch.exp(raw.clamp(-4.0, 4.5)) * STRIDE
        n, _, gh, gw = raw.shape
        logits = raw.reshape(n, 4, self.bins, gh, gw)
        self.box_logits = logits
        log_d = (F.softmax(logits, dim=2) * self.levels.view(1, 1, -1, 1, 1)).sum(dim=2)
        return torch.exp(log_d) * STRIDE

    def features(self, patches):
        f8 = self.s8(patches)
        f16 = self.s16(f8)
        f32 = self.s32(f16)
        p16 = F.relu(f16 + self.up32(f32))
        p8 = self.ctx8(F.relu(f8 + self.up16(p16)))
        return self.head(p8), f32

    def forward(self, x, area_window=0):
        """x: normalised frames [N, 1, H, W]; returns heat logits, box distances (pixels)
        and whole-image logits (the classes, then `none`); with `area_window`, also the
        area logits: the image head on every window of that many 1/32 cells
        ([N, classes + 1, H/32, W/32], what the exported `area` output computes)."""
        h, f32 = self.features(F.pixel_unshuffle(x, PATCH))
        out = (self.heat(h), self.distances(h), self.image(f32.mean(dim=(2, 3))))
        if area_window:
            pooled = F.avg_pool2d(f32, area_window, 1, area_window // 2, count_include_pad=False)
            out += (self.image(pooled.permute(0, 2, 3, 1)).permute(0, 3, 1, 2),)
        return out


def focal_loss(logits, heat, ignore=None, quality=None, class_weight=None):
    """CenterNet's focal loss; cells where `ignore` is 1 (a defect cut off by a mosaic's
    seam) count neither as positives nor as negatives. With `quality` (per cell, 0 to 1,
    no gradient: the IoU of the box the cell predicts with the box it is taught), a peak
    is taught that IoU instead of 1 (GFL's quality focal loss): of a class's peaks, those
    whose boxes fit rank higher. With `class_weight` (one number per class), each class's
    heat map counts that many times, its peaks and its background alike."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = heat.eq(1.0).float()
    neg = 1.0 - pos
    count = pos.sum().clamp(min=1.0)
    if ignore is not None:
        neg = neg * (1.0 - ignore[:, None])
    if class_weight is not None:
        pos, neg = pos * class_weight[:, None, None], neg * class_weight[:, None, None]
    if quality is None:
        pos_loss = -(torch.log(p) * (1 - p) ** 2 * pos).sum()
    else:
        pos_loss = (soft_focal(p, quality[:, None].expand_as(p)) * pos).sum()
    neg_loss = -(torch.log(1 - p) * p ** 2 * (1 - heat) ** 4 * neg).sum()
    return (pos_loss + neg_loss) / count


def soft_focal(p, q):
    """Per cell, the quality focal loss of probabilities `p` (clamped away from 0 and 1)
    taught soft targets `q`: the cross-entropy, weighted by the squared gap."""
    return -(q * torch.log(p) + (1 - q) * torch.log(1 - p)) * (q - p).abs() ** 2


def cell_centres(g, device=None):
    c = (torch.arange(g, dtype=torch.float32, device=device) + 0.5) * STRIDE
    return c.view(1, g), c.view(g, 1)  # x along columns, y along rows


def corners(box):
    """Per cell, the box it predicts (distances from the cell's centre to the edges) as
    x0 y0 x1 y1, the form of `targets`' `reg`. Square grids, as training's inputs."""
    cx, cy = cell_centres(box.shape[-1])
    return torch.stack([cx - box[:, 0], cy - box[:, 1], cx + box[:, 2], cy + box[:, 3]], 1)


def box_ious(box, reg):
    """Per cell, the IoU and GIoU of the box it predicts (distances to the edges) with the
    box it is taught (`reg`, x0 y0 x1 y1)."""
    px0, py0, px1, py1 = corners(box).unbind(1)
    tx0, ty0, tx1, ty1 = reg[:, 0], reg[:, 1], reg[:, 2], reg[:, 3]
    iw = (torch.min(px1, tx1) - torch.max(px0, tx0)).clamp(min=0)
    ih = (torch.min(py1, ty1) - torch.max(py0, ty0)).clamp(min=0)
    inter = iw * ih
    union = (px1 - px0) * (py1 - py0) + (tx1 - tx0) * (ty1 - ty0) - inter
    iou = inter / union.clamp(min=1e-6)
    hull = (torch.max(px1, tx1) - torch.min(px0, tx0)) * (torch.max(py1, ty1) - torch.min(py0, ty0))
    return iou, iou - (hull - union) / hull.clamp(min=1e-6)


def giou_loss(box, reg, weight):
    giou = box_ious(box, reg)[1]
    return ((1 - giou) * weight).sum() / weight.sum().clamp(min=1e-6)


def dfl_loss(logits, reg, weight, levels):
    """GFL's distribution focal loss: per edge, the cross-entropy of its bins with the
    taught log-distance split between the two bins around it (nearer gets more), weighted
    per cell as the GIoU loss is. logits [N, 4, bins, g, g]; reg x0 y0 x1 y1 per cell."""
    cx, cy = cell_centres(reg.shape[-1])
    taught = torch.stack([cx - reg[:, 0], cy - reg[:, 1], reg[:, 2] - cx, reg[:, 3] - cy], 1)
    step = float(levels[1] - levels[0])
    u = ((torch.log(taught.clamp(min=1e-3) / STRIDE) - float(levels[0])) / step).clamp(0, len(levels) - 1 - 1e-4)
    lo = u.floor().long()
    right = u - lo
    logp = F.log_softmax(logits.float(), dim=2)
    below, above = logp.gather(2, lo[:, :, None]).squeeze(2), logp.gather(2, lo[:, :, None] + 1).squeeze(2)
    ce = -((1 - right) * below + right * above)
    return (ce.mean(dim=1) * weight).sum() / weight.sum().clamp(min=1e-6)


def decode(heat, box, k=50, floor=0.01, nms_iou=0.5):
    """Peaks of the heat map (3x3 local maxima) as (class, score, x0, y0, x1, y1), best first;
    of peaks of one class whose boxes overlap by more than `nms_iou`, only the surest
    (inspectd's `model.nms_iou`). The rule of inspectd's classify.rs, except that here the
    padding cells count as peaks and neighbours too (inspectd ignores them); on the
    held-out images both give mAP@0.5 0.628 for the model of 2026-11-30."""
    heat = torch.as_tensor(heat)[None] if heat.ndim == 3 else torch.as_tensor(heat)
    box = torch.as_tensor(box)[None] if box.ndim == 3 else torch.as_tensor(box)
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    n, c, g_h, g_w = heat.shape
    scores, idx = peaks[0].reshape(-1).topk(min(k, c * g_h * g_w))
    out = []
    for s, i in zip(scores.tolist(), idx.tolist()):
        if s < floor:
            break
        cls, rem = divmod(i, g_h * g_w)
        iy, ix = divmod(rem, g_w)
        l, t, r, b = box[0, :, iy, ix].tolist()
        x, y = (ix + 0.5) * STRIDE, (iy + 0.5) * STRIDE
        d = (cls, s, x - l, y - t, x + r, y + b)
        if not any(o[0] == cls and iou(o[2:], d[2:]) > nms_iou for o in out):
            out.append(d)
    return out


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / max((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter, 1e-9)


def average_precision(dets, gts, cls, thr):
    """VOC all-points AP of one class at one IoU threshold. dets: (image, score, box)."""
    n_gt = sum(1 for boxes in gts.values() for b in boxes if b[0] == cls)
    if n_gt == 0:
        return None
    used = {k: [False] * len(v) for k, v in gts.items()}
    tp = []
    for img, _, box in sorted(dets, key=lambda d: -d[1]):
        best, best_j = thr, -1
        for j, g in enumerate(gts[img]):
            if g[0] != cls or used[img][j]:
                continue
            o = iou(box, g[1:])
            if o >= best:
                best, best_j = o, j
        if best_j >= 0:
            used[img][best_j] = True
        tp.append(best_j >= 0)
    tp = np.array(tp, dtype=np.float64)
    if len(tp) == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1)
    mrec = np.concatenate([[0], recall, [1]])
    mpre = np.concatenate([[0], precision, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@torch.no_grad()
def predict(model, img):
    x = torch.from_numpy(pad_to(img, SIDE).astype(np.float32))[None, None]
    heat_logits, box, image_logits = model(x)
    return torch.sigmoid(heat_logits)[0], box[0], image_logits[0]


@torch.no_grad()
def validate(model, val, val_crops):
    model.eval()
    dets, gts = [], {}
    confusion = np.zeros((len(CLASSES), len(CLASSES) + 1), np.int64)
    heat_correct = 0
    escapes = 0
    boxfree_flagged, boxfree_total = 0, 0
    for it in val:
        heat, box, image_logits = predict(model, it["img"])
        found = decode(heat, box)
        h, w = it["img"].shape
        gts[it["stem"]] = [(c, x0, y0, x1, y1) for c, x0, y0, x1, y1 in it["boxes"]]
        for c, s, x0, y0, x1, y1 in found:
            dets.append((c, it["stem"], s, (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))))
        escapes += not any(s >= 0.3 for _, s, *_ in found)
        # The image's class: the whole-image head (what inspectd reports as the frame's
        # class); the highest heat peak is scored beside it for comparison.
        confusion[it["label"], int(image_logits.argmax())] += 1
        evidence = heat[:, : (h + STRIDE - 1) // STRIDE, : (w + STRIDE - 1) // STRIDE].amax(dim=(1, 2))
        heat_correct += int(evidence.argmax()) == it["label"]
        # Box-free surface inside reported boxes (score >= 0.3).
        truth = np.zeros((h, w), bool)
        for _, x0, y0, x1, y1 in it["boxes"]:
            truth[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))] = True
        flagged = np.zeros((h, w), bool)
        for c, s, x0, y0, x1, y1 in found:
            if s >= 0.3:
                flagged[max(int(y0), 0):max(int(math.ceil(y1)), 0), max(int(x0), 0):max(int(math.ceil(x1)), 0)] = True
        boxfree_flagged += int((flagged & ~truth).sum())
        boxfree_total += int((~truth).sum())
    # Defect-free surfaces from the held-out images' crops only (a fixed draw): the area
    # inside reported boxes at 0.3, and how often the image head says `none`.
    rng = random.Random(7)
    clean_flagged, clean_total, clean_none = 0, 0, 0
    surfaces = [negative(val_crops, rng) for _ in range(60)]
    for img in surfaces:
        heat, box, image_logits = predict(model, img)
        flagged = np.zeros(img.shape, bool)
        for c, s, x0, y0, x1, y1 in decode(heat, box):
            if s >= 0.3:
                flagged[max(int(y0), 0):max(int(math.ceil(y1)), 0), max(int(x0), 0):max(int(math.ceil(x1)), 0)] = True
        clean_flagged += int(flagged.sum())
        clean_total += flagged.size
        clean_none += int(image_logits.argmax()) == NONE
    ap50 = {}
    ap5095 = []
    for c in range(len(CLASSES)):
        per = [(img, s, b) for cc, img, s, b in dets if cc == c]
        a = average_precision(per, gts, c, 0.5)
        if a is None:
            continue
        ap50[CLASSES[c]] = a
        ap5095.append(np.mean([average_precision(per, gts, c, t) for t in np.arange(0.5, 0.96, 0.05)]))
    return {
        "image_accuracy": float(np.trace(confusion[:, :len(CLASSES)]) / confusion.sum()),
        "escapes_at_0.3": escapes / len(val),
        "clean_flagged_area_at_0.3": clean_flagged / max(clean_total, 1),
        "clean_image_none": clean_none / len(surfaces),
        "image_accuracy_by_heat": heat_correct / len(val),
        "map50": float(np.mean(list(ap50.values()))),
        "map50_95": float(np.mean(ap5095)),
        "ap50": ap50,
        "boxfree_flagged_at_0.3": boxfree_flagged / max(boxfree_total, 1),
        "confusion_matrix": confusion.tolist(),
    }


def ignore_mask(regions, side):
    """1 at the cells whose centre lies inside one of `regions` (x0, y0, x1, y1)."""
    g = side // STRIDE
    mask = np.zeros((g, g), np.float32)
    c = (np.arange(g, dtype=np.float32) + 0.5) * STRIDE
    for x0, y0, x1, y1 in regions:
        mask[np.ix_((c > y0) & (c < y1), (c > x0) & (c < x1))] = 1.0
    return mask


def area_targets(boxes, negative, window, side=SIDE, share=0.25):
    """Per cell of the 1/32 grid, the class the area output should read through a window
    of `window` cells centred on it: `none` everywhere on a negative; on a defect image,
    the box's class where boxes cover at least `share` of the window, and -1 (no loss)
    elsewhere, since NEU's boxes miss some of a defect (most of all crazing and rolled-in
    scale, textures over the image) and the rest of a defect image is not sure to be
    clean."""
    g = side // 32
    if negative:
        return np.full((g, g), NONE, np.int64)
    out = np.full((g, g), -1, np.int64)
    half = window * 32 / 2
    for i in range(g):
        for j in range(g):
            cx, cy = (j + 0.5) * 32, (i + 0.5) * 32
            wx0, wy0 = max(cx - half, 0), max(cy - half, 0)
            wx1, wy1 = min(cx + half, side), min(cy + half, side)
            cover = np.zeros((int(wy1 - wy0), int(wx1 - wx0)), bool)
            cls = -1
            for c, x0, y0, x1, y1 in boxes:
                kx0, ky0 = int(max(x0, wx0) - wx0), int(max(y0, wy0) - wy0)
                kx1, ky1 = int(min(x1, wx1) - wx0), int(min(y1, wy1) - wy0)
                if kx1 > kx0 and ky1 > ky0:
                    cover[ky0:ky1, kx0:kx1] = True
                    cls = c
            if cls >= 0 and cover.mean() >= share:
                out[i, j] = cls
    return out


def batches(items, batch_size, rng, widths, crops=None, clean_share=0.0, pos_gauss=1.0, mosaic_share=0.0,
            placed=False, laid_share=0.0, area_window=0, scale=(0.0, 1.0, 1.0), reg_floor=0.3):
    """Shuffled batches of augmented images (a `mosaic_share` of them as four-image
    mosaics) and, `clean_share` as many again, defect-free negatives (no heat anywhere,
    image label `none`). Image labels are class distributions (one-hot but for mosaics).
    With `area_window`, each input also gets its per-cell area targets (`area_targets`)."""
    order = list(range(len(items)))
    if crops:
        order += [-1] * int(round(clean_share * len(items)))
    rng.shuffle(order)
    for s in range(0, len(order) - batch_size + 1, batch_size):
        imgs, heats, regs, weights, labels, ignores, areas = [], [], [], [], [], [], []
        for i in order[s:s + batch_size]:
            label = np.zeros(len(CLASSES) + 1, np.float32)
            ignore = []
            if i < 0:
                img, boxes = negative(crops, rng), []
                label[NONE] = 1.0
            elif laid_share > 0 and crops and rng.random() < laid_share:
                img, boxes, ignore, label = laid(items, crops, rng)
            elif mosaic_share > 0 and rng.random() < mosaic_share:
                img, boxes, ignore, label = mosaic(items, rng, placed=placed)
            else:
                img, boxes = augment(items[i]["img"], items[i]["boxes"], rng, scale=scale)
                label[items[i]["label"]] = 1.0
            heat, reg, weight = targets(boxes, SIDE, widths, pos_gauss, reg_floor)
            imgs.append(img.astype(np.float32))
            heats.append(heat)
            regs.append(reg)
            weights.append(weight)
            labels.append(label)
            ignores.append(ignore_mask(ignore, SIDE))
            areas.append(area_targets(boxes, i < 0, area_window) if area_window else np.zeros((1, 1), np.int64))
        yield (torch.from_numpy(np.stack(imgs))[:, None], torch.from_numpy(np.stack(heats)),
               torch.from_numpy(np.stack(regs)), torch.from_numpy(np.stack(weights)),
               torch.from_numpy(np.stack(labels)), torch.from_numpy(np.stack(ignores)),
               torch.from_numpy(np.stack(areas)))


def load_teacher(path, design):
    """A trained net (its EMA weights, as train.py saves them), frozen, for distillation."""
    net = Detector(design)
    net.load_state_dict(torch.load(path))
    net = net.to(memory_format=torch.channels_last).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def mean_of(outs):
    """Several nets' outputs (probabilities, box distances) averaged element by element:
    an ensemble's outputs, in the same form."""
    return tuple(sum(o[k] for o in outs) / len(outs) for k in range(len(outs[0])))


@torch.no_grad()
def teachers_say(teachers, xn):
    """The teachers' mean heat probability, box distances and image probabilities."""
    return mean_of([(torch.sigmoid(heat.float()), box.float(), F.softmax(image.float(), 1))
                    for heat, box, image in (t(xn) for t in teachers)])


def distill_loss(teachers, xn, heat_logits, box, image_logits, heat, box_weight):
    """What the teachers teach, on the same input: the heat their mean probability at every
    cell (cross-entropy to the soft target, weighted by the squared gap, as the quality
    focal loss; normalised like the labels' focal loss, by the labels' peaks), the boxes
    their mean boxes where their heat reaches 0.1 (GIoU, weighted by that heat), the image
    head their mean image probabilities."""
    t_heat, t_box, t_image = teachers_say(teachers, xn)
    p = torch.sigmoid(heat_logits).clamp(1e-4, 1 - 1e-4)
    heat_kd = soft_focal(p, t_heat).sum() / heat.eq(1.0).sum().clamp(min=1.0)
    sure = t_heat.max(1).values
    box_kd = giou_loss(box, corners(t_box), sure * (sure >= 0.1))
    image_kd = -(t_image * F.log_softmax(image_logits, 1)).sum(1).mean()
    return heat_kd + box_weight * box_kd + 0.2 * image_kd


def count_macs(model, side_h, side_w):
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        if isinstance(mod, nn.Conv2d):
            macs += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.ConvTranspose2d):
            macs += inp[0].numel() * mod.out_channels * mod.kernel_size[0] * mod.kernel_size[1]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.zeros(1, 1, side_h, side_w))
    for h in hs:
        h.remove()
    return macs


class Exported(nn.Module):
    """What inspectd runs. In: the frame as 8x8 patches, [1, 64, H/8, W/8] raw gray levels
    (channel dy * 8 + dx holds pixel (8 * x + dx, 8 * y + dy)); the normalisation is folded
    into the first convolution, so inspectd only rearranges and converts. Out: heat
    probabilities, box distances in pixels, whole-image probabilities (the image head:
    which class the frame as a whole shows, or `none`), and `area`: the image head on every
    window of `area_window` cells of the 1/32 grid (7: 224 px; the image head's weights as
    a 1 x 1 convolution on the 1/32 features, then their average over the window, which
    is the head on the averaged features: at the centre of a 224 x 224 input the 7-cell
    window is the image output itself), where a texture defect covers the surface."""

    def __init__(self, net, mean, std, area_window=7):
        super().__init__()
        self.net = net
        # conv(w, x * a + b) = conv(w * a, x) + b * sum(w): exact for a 1x1 convolution.
        a, b = 1.0 / (255.0 * std), -mean / std
        stem = net.s8[0][0]
        self.stem = nn.Conv2d(stem.in_channels, stem.out_channels, 1, bias=True)
        with torch.no_grad():
            self.stem.weight.copy_(stem.weight * a)
            self.stem.bias.copy_(b * stem.weight.sum(dim=(1, 2, 3)))
        lin = net.image
        self.pool = nn.AvgPool2d(area_window, 1, area_window // 2, count_include_pad=False)
        self.area = nn.Conv2d(lin.in_features, lin.out_features, 1)
        with torch.no_grad():
            self.area.weight.copy_(lin.weight[:, :, None, None])
            self.area.bias.copy_(lin.bias)

    def forward(self, patches):
        n = self.net
        f8 = n.s8[1](n.s8[0][2](n.s8[0][1](self.stem(patches))))
        f16 = n.s16(f8)
        f32 = n.s32(f16)
        p16 = F.relu(f16 + n.up32(f32))
        p8 = n.ctx8(F.relu(f8 + n.up16(p16)))
        h = n.head(p8)
        image = F.softmax(n.image(f32.mean(dim=(2, 3))), dim=1)
        # The average is linear and its weights sum to 1 (padding not counted), so the 1 x 1
        # convolution goes first and the average runs over its 7 channels, not the 1/32
        # map's 160: the same numbers at a twentieth of the averaging.
        area = F.softmax(self.pool(self.area(f32)), dim=1)
        return torch.sigmoid(n.heat(h)), n.distances(h), image, area


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=os.path.join(HERE, "..", "..", "shared", "datasets", "neu"))
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's decoupled weight decay")
    ap.add_argument("--design", choices=sorted(DESIGNS), default="deep")
    ap.add_argument("--ema", type=float, default=0.999, help="decay of the weights' moving average")
    ap.add_argument("--alpha", type=float, default=0.54, help="Gaussian size as a share of the box (TTFNet)")
    ap.add_argument("--alpha-class", action="append", default=[], metavar="CLASS=ALPHA",
                    help="another Gaussian size for one class (repeatable), e.g. crazing=0.8")
    ap.add_argument("--class-weight", action="append", default=[], metavar="CLASS=WEIGHT",
                    help="that class's heat map counts WEIGHT times in the focal loss (repeatable; default 1)")
    ap.add_argument("--val-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clean-share", type=float, default=0.35,
                    help="defect-free negatives per epoch, as a share of the training images")
    ap.add_argument("--pos-gauss", type=float, default=1.0,
                    help="cells inside a box where its Gaussian reaches this are positives too (1: the peak only)")
    ap.add_argument("--iou-heat", action="store_true",
                    help="a peak is taught the IoU of its box with the defect's (GFL's quality focal loss), not 1")
    ap.add_argument("--mosaic", type=float, default=0.0,
                    help="share of training images given as four-image mosaics (off for the last tenth of epochs)")
    ap.add_argument("--mosaic-placed", action="store_true",
                    help="a mosaic is 200 x 200, placed in the input like an image (edges repeated)")
    ap.add_argument("--laid", type=float, default=0.0,
                    help="share of training images given as a window laid into a defect-free input")
    ap.add_argument("--scale", type=float, default=0.0,
                    help="share of training images shown at another size (off for the last tenth of epochs)")
    ap.add_argument("--scale-range", type=float, nargs=2, default=(0.7, 1.12), metavar=("LO", "HI"),
                    help="the factors a rescaled image is drawn from (at most the 224 px input)")
    ap.add_argument("--area-window", type=int, default=3, choices=[3, 5, 7],
                    help="1/32 cells a side of the area output's window (3: 96 px, the shipped "
                         "model, trained per cell too; 7: 224 px, the image head's own view, "
                         "the models before)")
    ap.add_argument("--level-share", type=float, default=0.0,
                    help="share of inputs moved to a random mean gray level (50-210) before the lighting drift")
    ap.add_argument("--no-turns", action="store_true",
                    help="mirror inputs but never turn them by 90 degrees (keep the strip's orientation)")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast for the forward pass (weights, losses and the export stay float32)")
    ap.add_argument("--inner-val", action="store_true",
                    help="validate on a fifth of the training images (for screening changes), not the held-out split")
    ap.add_argument("--train-share", type=float, default=1.0,
                    help="train on this share of the training images only (per class, the same images for every "
                         "seed, each smaller share inside the larger): a learning curve")
    ap.add_argument("--tag", default=None, help="names the metrics file (default: clean.s<seed>)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--box-weight", type=float, default=5.0, help="weight of the boxes' GIoU loss")
    ap.add_argument("--dfl-weight", type=float, default=1.0,
                    help="weight of the distribution focal loss (designs with bins per edge)")
    ap.add_argument("--reg-floor", type=float, default=0.3,
                    help="boxes are regressed at the cells inside a box where its Gaussian exceeds this")
    ap.add_argument("--teacher", action="append", default=[], metavar="PT",
                    help="neu_det.pt of a run on the same split (repeatable): the mean of these nets' heat, "
                         "boxes and image probabilities teaches this one besides the labels (distillation)")
    ap.add_argument("--teacher-design", choices=sorted(DESIGNS), default="deep", help="the teachers' design")
    ap.add_argument("--distill", type=float, default=1.0, help="weight of the teachers' losses")
    ap.add_argument("--time-only", metavar="ONNX",
                    help="export --design with random weights to ONNX (for timing in tract and ONNX Runtime) and exit")
    a = ap.parse_args()
    if not 0.0 <= a.reg_floor < 1.0:
        ap.error(f"--reg-floor must be at least 0 and below 1, not {a.reg_floor}")
    if not 0.0 < a.train_share <= 1.0:
        ap.error(f"--train-share must be above 0 and at most 1, not {a.train_share}")
    for path in a.teacher:
        if not os.path.isfile(path):
            ap.error(f"--teacher {path}: no such file (a neu_det.pt written by train.py)")

    def per_class(items, default, flag, what):
        """`CLASS=NUMBER` items over a default for every class."""
        values = [default] * len(CLASSES)
        for item in items:
            name, _, value = item.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = 0.0
            if name not in CLASSES or not number > 0:
                ap.error(f"{flag} {item!r}: expected CLASS={what}, CLASS one of {', '.join(CLASSES)}, "
                         f"{what} a number above 0")
            values[CLASSES.index(name)] = number
        return values

    widths = per_class(a.alpha_class, a.alpha, "--alpha-class", "ALPHA")
    class_weight = per_class(a.class_weight, 1.0, "--class-weight", "WEIGHT")
    if a.time_only:
        net = Detector(a.design).eval()
        exported = Exported(net, 0.5, 0.2, a.area_window).eval()
        g = SIDE // PATCH
        torch.onnx.export(exported, torch.zeros(1, PATCH * PATCH, g, g), a.time_only, input_names=["patches"],
                          output_names=["heat", "box", "image", "area"],
                          dynamic_axes={"patches": {2: "h", 3: "w"}, "heat": {2: "gh", 3: "gw"},
                                        "box": {2: "gh", 3: "gw"}, "area": {2: "ah", 3: "aw"}},
                          opset_version=13, dynamo=False)
        print(f"{a.time_only}: design {a.design}, {count_macs(net, 1024, 1280) / 1e9:.2f} G multiply-adds per 1280x1024")
        return
    global LEVEL_SHARE, TURNS
    LEVEL_SHARE = a.level_share
    TURNS = not a.no_turns

    t_start = time.time()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = random.Random(a.seed)

    items = load_dataset(a.dataset)
    train, val = split(items, a.val_share, a.inner_val)
    if a.train_share < 1.0:
        train = subset(train, a.train_share)
        print(f"learning curve: training on {a.train_share:.0%} of the training images", flush=True)
    if a.inner_val:
        # Screening a change: a fifth of the training images is held out of training and
        # validated on; the 300 held-out images are not looked at.
        print("inner validation: the held-out images are not used by this run", flush=True)
    print(f"{len(items)} images: {len(train)} train, {len(val)} held out (split seed {SPLIT_SEED}); "
          f"training seed {a.seed}", flush=True)
    # Negatives from the training images' box-free area only; the held-out images' crops
    # are for scoring.
    crops, val_crops = clean_crops(train), clean_crops(val)
    print(f"defect-free crops: {sum(map(len, crops.values()))} from the training images, "
          f"{sum(map(len, val_crops.values()))} from the held-out ones (scoring only)", flush=True)

    mean, std = pixel_stats(train)
    # Channels-last tensors let oneDNN's convolutions skip a reorder at every layer: a
    # training step takes about three quarters of the time on a CPU (the weights and the
    # export are the same).
    model = Detector(a.design).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad) - sum(
        p.numel() for p in model.image.parameters())
    macs_neu = count_macs(model, SIDE, SIDE)
    macs_frame = count_macs(model, 1024, 1280)
    print(f"model: design {a.design}: {params} parameters, {macs_neu / 1e6:.1f} M multiply-adds "
          f"per 224x224, {macs_frame / 1e9:.2f} G per 1280x1024", flush=True)

    teachers = [load_teacher(path, a.teacher_design) for path in a.teacher]
    if teachers:
        print(f"distillation: {len(teachers)} teacher(s) ({a.teacher_design}), weight {a.distill}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    steps_per_epoch = int(len(train) * (1 + a.clean_share)) // a.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps_per_epoch,
                                                pct_start=0.1)
    a_mean, a_std = torch.tensor(mean * 255.0), torch.tensor(std * 255.0)
    # An exponential moving average of the weights is what gets validated and exported:
    # it is steadier than the last step's weights on a dataset this small.
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    # The 7-cell window is the image head's own view of a 224 x 224 input: trained through
    # the image loss. A smaller window gets a loss of its own, per cell.
    area_window = a.area_window if a.area_window < 7 else 0
    # All ones leaves the loss as it was, to the last bit.
    heat_weight = torch.tensor(class_weight) if any(w != 1.0 for w in class_weight) else None
    step = 0
    for epoch in range(a.epochs):
        model.train()
        sums = np.zeros(5)
        # YOLO's "close mosaic": the last tenth of the epochs sees whole images only.
        late = epoch >= a.epochs - max(a.epochs // 10, 1)
        mosaic_share = 0.0 if late else a.mosaic
        # Sizes likewise: the last tenth sees the camera's own scale only.
        scale = (0.0 if late else a.scale, *a.scale_range)
        for x, heat, reg, weight, labels, ignore, area in batches(train, a.batch, rng, widths, crops,
                                                                  a.clean_share, a.pos_gauss, mosaic_share,
                                                                  a.mosaic_placed, a.laid, area_window, scale,
                                                                  a.reg_floor):
            xn = ((x - a_mean) / a_std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                out = model(xn, area_window)
            heat_logits, box, image_logits = out[0].float(), out[1].float(), out[2].float()
            quality = box_ious(box.detach(), reg)[0].clamp(0, 1) if a.iou_heat else None
            losses = (focal_loss(heat_logits, heat, ignore, quality, heat_weight),
                      a.box_weight * giou_loss(box, reg, weight),
                      0.2 * F.cross_entropy(image_logits, labels))
            loss = sum(losses)
            if model.bins:
                loss = loss + a.dfl_weight * dfl_loss(model.box_logits, reg, weight, model.levels)
            if teachers:
                taught = distill_loss(teachers, xn, heat_logits, box, image_logits, heat, a.box_weight)
                loss = loss + a.distill * taught
                sums[4] += taught.item()
            if area_window and (area >= 0).any():
                # The area output read through its own window, per cell; no cell of a defect
                # image is taught `none` (area_targets).
                area_loss = 0.2 * F.cross_entropy(out[3].float(), area, ignore_index=-1)
                loss = loss + area_loss
                sums[3] += area_loss.item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            decay = min(a.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
                    if e.dtype.is_floating_point:
                        e.mul_(decay).add_(m, alpha=1 - decay)
                    else:
                        e.copy_(m)
            sums[:3] += [v.item() for v in losses]
        msg = (f"epoch {epoch + 1:3d}/{a.epochs}  heat {sums[0] / steps_per_epoch:.3f}  "
               f"giou {sums[1] / steps_per_epoch:.3f}  image {sums[2] / steps_per_epoch:.3f}  "
               + (f"area {sums[3] / steps_per_epoch:.3f}  " if area_window else "")
               + (f"taught {sums[4] / steps_per_epoch:.3f}  " if teachers else "") +
               f"{time.time() - t_start:.0f} s")
        print(msg, flush=True)
    train_seconds = time.time() - t_start

    # Validation, once, at the end: nothing above looked at these images.
    model = ema.to(memory_format=torch.contiguous_format)
    os.makedirs(a.out, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(a.out, "neu_det.pt"))  # first: the run's work, whatever follows
    metrics = validate(NormalisedNet(model, mean, std), val, val_crops)
    print(json.dumps({k: v for k, v in metrics.items() if k != "confusion_matrix"}), flush=True)
    print("confusion (rows true, columns predicted):", CLASSES + ["none"])
    print(np.array(metrics["confusion_matrix"]))

    record = {"seed": a.seed, "design": a.design, "epochs": a.epochs, "clean_share": a.clean_share,
              "pos_gauss": a.pos_gauss, "mosaic": a.mosaic, "mosaic_placed": a.mosaic_placed, "bf16": a.bf16,
              "laid": a.laid, "scale": a.scale, "iou_heat": a.iou_heat, "scale_range": list(a.scale_range),
              "level_share": a.level_share, "turns": TURNS,
              "area_window": a.area_window, "inner_val": a.inner_val, "train_share": a.train_share,
              "box_weight": a.box_weight, "reg_floor": a.reg_floor, "dfl_weight": a.dfl_weight, "alpha": a.alpha,
              "alpha_class": dict(zip(CLASSES, widths)), "class_weight": dict(zip(CLASSES, class_weight)),
              "lr": a.lr, "weight_decay": a.weight_decay, "batch": a.batch, "ema": a.ema,
              "teachers": list(a.teacher), "teacher_design": a.teacher_design,
              "distill": a.distill if a.teacher else 0.0,
              "parameters": params,
              "macs_224": macs_neu, "macs_1280x1024": macs_frame, "train_seconds": round(train_seconds, 1),
              "val_images": len(val), **metrics}
    tag = a.tag or (f"clean.s{a.seed}" if a.clean_share > 0 else f"{a.design}.s{a.seed}")
    with open(os.path.join(a.out, f"neu_det.metrics.{tag}.json"), "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    onnx_path = os.path.join(a.out, "neu_det.onnx")
    exported = Exported(model, mean, std, a.area_window).eval()
    g = SIDE // PATCH
    torch.onnx.export(exported, torch.zeros(1, PATCH * PATCH, g, g), onnx_path, input_names=["patches"],
                      output_names=["heat", "box", "image", "area"],
                      dynamic_axes={"patches": {2: "h", 3: "w"}, "heat": {2: "gh", 3: "gw"}, "box": {2: "gh", 3: "gw"},
                                    "area": {2: "ah", 3: "aw"}},
                      opset_version=13, dynamo=False)
    # The exporter restores modes afterwards; make sure nothing below runs in training mode.
    model.eval()
    exported.eval()
    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()
    meta = {
        "id": f"neu-det-{sha[:12]}",
        "onnx": "neu_det.onnx",
        "sha256": sha,
        "labels": CLASSES,
        "input": {"layout": "NCHW", "channels": 1, "name": "patches", "patch": PATCH, "multiple": MULTIPLE},
        "normalize": {"scale": 1.0, "mean": 0.0, "std": 1.0},
        "output": {"kind": "centernet", "stride": STRIDE, "heat": "heat", "box": "box", "image": "image",
                   "area": "area", "area_stride": 32, "none": True},
        "trained": {"dataset": "NEU surface defect database, 1500-image copy", "seed": a.seed,
                    "split_seed": SPLIT_SEED, "epochs": a.epochs, "design": a.design,
                    "clean_share": a.clean_share, "mosaic": a.mosaic, "bf16": a.bf16,
                    "area_window": a.area_window,
                    "train_images": len(train), "val_images": len(val),
                    "train_seconds": round(train_seconds, 1), "parameters": params,
                    "macs_per_1280x1024": macs_frame, "pixel_mean": mean, "pixel_std": std},
    }
    with open(os.path.join(a.out, "neu_det.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out, "neu_det.split.json"), "w") as f:
        json.dump({"seed": SPLIT_SEED, "train": sorted(it["stem"] for it in train),
                   "val": sorted(it["stem"] for it in val)}, f, indent=1)
        f.write("\n")

    # Bundled samples: held-out images only, four per class, for the demo and parity test.
    samples_dir = os.path.join(a.out, "samples")
    if os.path.isdir(samples_dir):
        shutil.rmtree(samples_dir)
    os.makedirs(samples_dir)
    reference = []
    for c in range(len(CLASSES)):
        for it in sorted((it for it in val if it["label"] == c), key=lambda it: it["stem"])[:4]:
            shutil.copy(os.path.join(a.dataset, "IMAGES", it["file"]), samples_dir)
            with torch.no_grad():
                frame = torch.from_numpy(pad_to(it["img"], SIDE).astype(np.float32))[None, None]
                heat, box, image, area = exported(F.pixel_unshuffle(frame, PATCH))
            reference.append({"image": f"samples/{it['file']}",
                              "heat": np.round(heat[0].numpy(), 7).ravel().tolist(),
                              "box": np.round(box[0].numpy(), 4).ravel().tolist(),
                              "image_probs": np.round(image[0].numpy(), 7).tolist(),
                              "area": np.round(area[0].numpy(), 7).ravel().tolist(),
                              "grid": [SIDE // STRIDE, SIDE // STRIDE]})
    with open(os.path.join(a.out, "neu_det.reference.json"), "w") as f:
        json.dump({"model": meta["id"], "source": "PyTorch", "heat_tolerance": 1e-4, "box_tolerance": 1e-2,
                   "images": reference}, f)
        f.write("\n")
    print(f"wrote {onnx_path} ({meta['id']}); training took {train_seconds:.0f} s, "
          f"all done in {time.time() - t_start:.0f} s")


class NormalisedNet(nn.Module):
    """The trained net fed raw gray levels, for validation."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net, self.mean, self.std = net, mean * 255.0, std * 255.0

    def forward(self, x, **kwargs):
        return self.net((x - self.mean) / self.std, **kwargs)


if __name__ == "__main__":
    main()
