#!/usr/bin/env python3
"""Train inspectd's steel-surface tile classifier on the NEU database and export it.

The model classifies 64 x 64 gray tiles into the six NEU defect classes plus `ok`
(defect-free steel, learned from crops that touch no annotated box). inspectd cuts each
frame into overlapping tiles, runs the model on every tile and builds the frame verdict
from the tile probabilities (see neu_tiles.md for how).

Usage (from the repository root):
    python3 -m venv models/.venv && models/.venv/bin/pip install -r models/requirements.txt
    models/.venv/bin/python models/train.py --dataset ../shared/datasets/neu

Writes, next to this script:
    neu_tiles.onnx            the model (input [N,1,64,64] float, output [N,7] probabilities)
    neu_tiles.pt              its PyTorch weights (not committed: regenerate references from them)
    neu_tiles.json            the metadata inspectd reads (labels, input, normalisation, tiling, id, sha256)
    neu_tiles.split.json      which images were trained on and which were held out for validation
    neu_tiles.reference.json  tile probabilities for the bundled sample images (the parity test)
    neu_tiles.metrics.json    validation metrics measured here in PyTorch
    samples/                  a few held-out images, for the demo and the parity test
"""
import argparse
import hashlib
import json
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
LABELS = ["ok"] + CLASSES
TILE = 64
STRIDE = 32
HERE = os.path.dirname(os.path.abspath(__file__))


def tile_positions(length, tile, stride):
    """Tile origins along one axis; the last tile is pushed back to end at the edge.

    inspectd's classify stage computes exactly the same positions (classify.rs)."""
    if length <= tile:
        return [0]
    out = list(range(0, length - tile + 1, stride))
    if out[-1] + tile < length:
        out.append(length - tile)
    return out


def read_boxes(xml_path):
    root = ET.parse(xml_path).getroot()
    boxes = []
    for obj in root.iter("object"):
        name = obj.findtext("name").strip()
        bb = obj.find("bndbox")
        x0, y0 = int(float(bb.findtext("xmin"))) - 1, int(float(bb.findtext("ymin"))) - 1
        x1, y1 = int(float(bb.findtext("xmax"))), int(float(bb.findtext("ymax")))
        boxes.append((name, max(x0, 0), max(y0, 0), x1, y1))
    return boxes


def load_dataset(root):
    items = []
    for fname in sorted(os.listdir(os.path.join(root, "IMAGES"))):
        stem, _ = os.path.splitext(fname)
        label = stem.rsplit("_", 1)[0]
        img = np.asarray(Image.open(os.path.join(root, "IMAGES", fname)).convert("L"), dtype=np.uint8)
        boxes = read_boxes(os.path.join(root, "ANNOTATIONS", stem + ".xml"))
        # One mask per class: which pixels lie inside a box of that class.
        masks = np.zeros((len(CLASSES),) + img.shape, dtype=np.uint8)
        for name, x0, y0, x1, y1 in boxes:
            masks[CLASSES.index(name), y0:y1, x0:x1] = 1
        items.append({"file": fname, "stem": stem, "label": label, "img": img, "masks": masks, "boxes": boxes})
    return items


def stratified_split(items, val_share, seed):
    rng = random.Random(seed)
    train, val = [], []
    for c in CLASSES:
        group = [it for it in items if it["label"] == c]
        rng.shuffle(group)
        n_val = int(round(len(group) * val_share))
        val += group[:n_val]
        train += group[n_val:]
    return train, val


def crop_label(item, x, y):
    """The tile's training label: `ok` when it touches no box, the dominant class when
    boxes cover enough of it (or it holds most of a small box), None when ambiguous."""
    window = item["masks"][:, y:y + TILE, x:x + TILE]
    cover = window.reshape(len(CLASSES), -1).mean(axis=1)
    if window.max() == 0:
        return 0
    c = int(cover.argmax())
    if cover[c] >= 0.25:
        return 1 + c
    for name, x0, y0, x1, y1 in item["boxes"]:
        area = (x1 - x0) * (y1 - y0)
        ix = max(0, min(x1, x + TILE) - max(x0, x))
        iy = max(0, min(y1, y + TILE) - max(y0, y))
        if area > 0 and ix * iy >= 0.5 * area:
            return 1 + CLASSES.index(name)
    return None


def sample_tiles(items, per_image, rng):
    xs, ys = [], []
    for item in items:
        h, w = item["img"].shape
        got, tries = 0, 0
        while got < per_image and tries < per_image * 8:
            tries += 1
            x, y = rng.randrange(0, w - TILE + 1), rng.randrange(0, h - TILE + 1)
            label = crop_label(item, x, y)
            if label is None:
                continue
            xs.append(item["img"][y:y + TILE, x:x + TILE])
            ys.append(label)
            got += 1
    return np.stack(xs), np.array(ys, dtype=np.int64)


class TileNet(nn.Module):
    """Patchify stem and strided 2x2 convolutions: shapes tract runs fast (anchors/README)."""

    def __init__(self, mean, std, n_out=len(LABELS)):
        super().__init__()
        self.mean, self.std = mean, std

        def block(cin, cout, k, s, p=0):
            return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            block(1, 32, 4, 4),        # 64 -> 16
            block(32, 64, 2, 2),       # 16 -> 8
            block(64, 64, 3, 1, 1),
            block(64, 128, 2, 2),      # 8 -> 4
            block(128, 128, 3, 1, 1),
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(128, n_out)

    def forward(self, x):
        # x: tiles already normalised by the caller with the mean and std from the metadata.
        x = self.features(x)
        x = x.mean(dim=(2, 3))
        return self.head(self.dropout(x))


def augment(batch, rng):
    # Flips and 90-degree turns: steel texture has no preferred orientation that the
    # classes depend on. Mild gain/offset jitter models lighting drift on the line.
    k = rng.randrange(4)
    batch = torch.rot90(batch, k, dims=(2, 3))
    if rng.random() < 0.5:
        batch = torch.flip(batch, dims=(3,))
    gain = torch.empty(batch.shape[0], 1, 1, 1).uniform_(0.85, 1.15)
    offset = torch.empty(batch.shape[0], 1, 1, 1).uniform_(-0.08, 0.08)
    return batch * gain + offset


def normalise(tiles_u8, mean, std):
    return (torch.from_numpy(tiles_u8).float().unsqueeze(1) / 255.0 - mean) / std


def frame_tiles(img):
    h, w = img.shape
    pos = [(x, y) for y in tile_positions(h, TILE, STRIDE) for x in tile_positions(w, TILE, STRIDE)]
    return pos, np.stack([img[y:y + TILE, x:x + TILE] for x, y in pos])


@torch.no_grad()
def image_probs(model, img, mean, std):
    pos, tiles = frame_tiles(img)
    return pos, F.softmax(model(normalise(tiles, mean, std)), dim=1).numpy()


def image_class(probs):
    """The defect class with the most evidence over the frame: the mean tile probability
    of each defect class (the `ok` column is not a candidate). Same rule as decide.rs."""
    return int(probs[:, 1:].mean(axis=0).argmax())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=os.path.join(HERE, "..", "..", "shared", "datasets", "neu"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--tiles-per-image", type=int, default=24)
    ap.add_argument("--val-share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()

    t_start = time.time()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = random.Random(a.seed)

    items = load_dataset(a.dataset)
    train, val = stratified_split(items, a.val_share, a.seed)
    print(f"{len(items)} images: {len(train)} train, {len(val)} held out for validation (seed {a.seed})")

    pixels = np.concatenate([it["img"].ravel() for it in train]).astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    model = TileNet(mean, std)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    batch_size = 128
    steps_per_epoch = (len(train) * a.tiles_per_image) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=a.epochs * steps_per_epoch)

    for epoch in range(a.epochs):
        xs, ys = sample_tiles(train, a.tiles_per_image, rng)
        order = np.random.default_rng(a.seed + epoch).permutation(len(ys))
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size:(s + 1) * batch_size]
            x = augment(normalise(xs[idx], mean, std), rng)
            y = torch.from_numpy(ys[idx])
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            total += len(idx)
        counts = np.bincount(ys, minlength=len(LABELS))
        print(f"epoch {epoch + 1:2d}/{a.epochs}  loss {loss_sum / total:.4f}  train tile acc {correct / total:.4f}  "
              f"tiles per label {counts.tolist()}  {time.time() - t_start:.0f} s", flush=True)

    model.eval()
    train_seconds = time.time() - t_start

    # Validation, measured once at the end: nothing above looked at these images.
    n = len(CLASSES)
    confusion = np.zeros((n, n), dtype=np.int64)
    for it in val:
        _, probs = image_probs(model, it["img"], mean, std)
        confusion[CLASSES.index(it["label"]), image_class(probs)] += 1
    accuracy = float(np.trace(confusion) / confusion.sum())
    vx, vy = sample_tiles(val, 16, random.Random(a.seed + 1))
    with torch.no_grad():
        tile_acc = float((model(normalise(vx, mean, std)).argmax(1).numpy() == vy).mean())
    print(f"validation: image-level accuracy {accuracy:.4f} on {len(val)} images, tile accuracy {tile_acc:.4f}")
    print("confusion (rows true, columns predicted):", CLASSES)
    print(confusion)

    os.makedirs(a.out, exist_ok=True)
    onnx_path = os.path.join(a.out, "neu_tiles.onnx")

    class Exported(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return F.softmax(self.net(x), dim=1)

    dummy = torch.zeros(1, 1, TILE, TILE)
    torch.onnx.export(Exported(model), dummy, onnx_path, input_names=["tiles"], output_names=["probs"],
                      dynamic_axes={"tiles": {0: "n"}, "probs": {0: "n"}}, opset_version=13, dynamo=False)
    # The exporter restores the wrapper's mode afterwards, and a new module is in training
    # mode: put the net back in eval mode before computing anything else with it.
    model.eval()
    torch.save(model.state_dict(), os.path.join(a.out, "neu_tiles.pt"))
    sha = hashlib.sha256(open(onnx_path, "rb").read()).hexdigest()

    meta = {
        "id": f"neu-tiles-{sha[:12]}",
        "onnx": "neu_tiles.onnx",
        "sha256": sha,
        "labels": LABELS,
        "ok_label": "ok",
        "input": {"layout": "NCHW", "channels": 1, "height": TILE, "width": TILE, "name": "tiles"},
        "normalize": {"scale": 1.0 / 255.0, "mean": mean, "std": std},
        "output": {"name": "probs", "kind": "probabilities"},
        "tiling": {"tile": TILE, "stride": STRIDE},
        "trained": {"dataset": "NEU surface defect database, 1500-image copy", "seed": a.seed,
                    "epochs": a.epochs, "train_images": len(train), "val_images": len(val),
                    "train_seconds": round(train_seconds, 1)},
    }
    with open(os.path.join(a.out, "neu_tiles.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out, "neu_tiles.split.json"), "w") as f:
        json.dump({"seed": a.seed, "train": sorted(it["stem"] for it in train),
                   "val": sorted(it["stem"] for it in val)}, f, indent=1)
        f.write("\n")

    # Bundled samples: held-out images only, four per class, for the demo and parity test.
    samples_dir = os.path.join(a.out, "samples")
    if os.path.isdir(samples_dir):
        shutil.rmtree(samples_dir)
    os.makedirs(samples_dir)
    reference = []
    for c in CLASSES:
        for it in sorted((it for it in val if it["label"] == c), key=lambda it: it["stem"])[:4]:
            shutil.copy(os.path.join(a.dataset, "IMAGES", it["file"]), samples_dir)
            pos, probs = image_probs(model, it["img"], mean, std)
            reference.append({"image": f"samples/{it['file']}", "tiles": [list(p) for p in pos],
                              "probs": np.round(probs, 7).tolist()})
    with open(os.path.join(a.out, "neu_tiles.reference.json"), "w") as f:
        json.dump({"model": meta["id"], "tolerance": 1e-4, "images": reference}, f)
        f.write("\n")
    with open(os.path.join(a.out, "neu_tiles.metrics.json"), "w") as f:
        json.dump({"model": meta["id"], "val_images": len(val), "image_accuracy": accuracy,
                   "tile_accuracy": tile_acc, "classes": CLASSES, "confusion_matrix": confusion.tolist(),
                   "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - t_start, 1)},
                  f, indent=1)
        f.write("\n")
    print(f"wrote {onnx_path} ({meta['id']}); training took {train_seconds:.0f} s, "
          f"all done in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
