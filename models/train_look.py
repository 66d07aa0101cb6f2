#!/usr/bin/env python3
"""Train inspectd's first look: a small net that says, per 32 x 32 cell of a frame, whether
a defect may touch it, so the detector (train.py) runs only on the windows around such
cells. A strip is clean almost everywhere; the first look costs a few percent of the
detector on a whole frame.

It reads the same input as the detector, the frame's 8 x 8 patches as 64 channels of raw
gray levels ([1, 64, H/8, W/8]: inspectd fills that tensor once per frame), and has one
output, `look` [1, 1, H/32, W/32]: the probability that a labelled box touches the cell.

It is trained on the detector's training images only (the same split, neu_det.split.json):
a cell is positive when a box covers any of it; defect-free negatives (box-free crops of
the training images, as single crops or cross-faded surfaces, train.py's `negative`) have
no positive cell. The focal loss keeps the many easy clean cells from drowning the rare
defect cells. The threshold inspectd uses is not chosen here: `inspectd eval --list train`
picks it on the training images (README, "The first look").

Usage (from the repository root, after train.py's venv is set up):
    models/.venv/bin/python models/train_look.py --dataset ../shared/datasets/neu --seed 1

Writes neu_look.onnx, neu_look.json (metadata), neu_look.reference.json (PyTorch's output
on the bundled samples: the parity test) and neu_look.metrics.s<seed>.json into --out.
"""
import argparse
import copy
import hashlib
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import train as T

CELL = 32


class Look(nn.Module):
    """1 x 1 convolution on the 8 x 8 patches (64 -> c8), 2 x 2 stride-2 convolutions to
    1/16 and 1/32 with a 3 x 3 at 1/16 and two at 1/32 (a receptive field of about 200 px:
    a texture is judged on its own, not against the rest of the frame), a 1 x 1 output."""

    def __init__(self, c8=16, c16=32, c32=48, pool=3):
        super().__init__()

        def cbr(cin, cout, k, s, p=0):
            return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.s8 = cbr(T.PATCH * T.PATCH, c8, 1, 1)
        self.s16 = nn.Sequential(cbr(c8, c16, 2, 2), cbr(c16, c16, 3, 1, 1))
        self.s32 = nn.Sequential(cbr(c16, c32, 2, 2), cbr(c32, c32, 3, 1, 1), cbr(c32, c32, 3, 1, 1))
        # The cell's verdict from the features of its neighbourhood (pool x pool cells):
        # a texture is judged over more than one cell, which steadies it.
        self.pool = nn.AvgPool2d(pool, 1, pool // 2, count_include_pad=False)
        self.out = nn.Conv2d(c32, 1, 1)
        nn.init.constant_(self.out.bias, -2.0)

    def forward(self, x):
        """x: normalised frames [N, 1, H, W]; the cells' logits [N, 1, H/32, W/32]."""
        return self.out(self.pool(self.s32(self.s16(self.s8(F.pixel_unshuffle(x, T.PATCH))))))


class Exported(nn.Module):
    """What inspectd runs: raw-gray patches in (the normalisation folded into the 1 x 1
    stem), probabilities out."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        a, b = 1.0 / (255.0 * std), -mean / std
        stem = net.s8[0]
        self.stem = nn.Conv2d(stem.in_channels, stem.out_channels, 1, bias=True)
        with torch.no_grad():
            self.stem.weight.copy_(stem.weight * a)
            self.stem.bias.copy_(b * stem.weight.sum(dim=(1, 2, 3)))

    def forward(self, patches):
        n = self.net
        f8 = n.s8[2](n.s8[1](self.stem(patches)))
        # The average is linear and its weights sum to 1 (padding not counted): the 1 x 1
        # output first, then the average over its one channel (the same numbers).
        return torch.sigmoid(n.pool(n.out(n.s32(n.s16(f8)))))


def cell_targets(boxes, side):
    """1 where a box covers any part of the 32 px cell."""
    g = side // CELL
    t = np.zeros((1, g, g), np.float32)
    for _, x0, y0, x1, y1 in boxes:
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        cx0, cy0 = int(x0 // CELL), int(y0 // CELL)
        cx1, cy1 = int(np.ceil(x1 / CELL)), int(np.ceil(y1 / CELL))
        t[0, max(cy0, 0):min(cy1, g), max(cx0, 0):min(cx1, g)] = 1.0
    return t


def line_negative(crops, rng, side=96):
    """A defect-free input as inspectd eval and the pipeline bench assemble clean frames:
    a surface of one class's `side` px crops only (the most seams per pixel), with the
    lighting drift every image gets."""
    groups = [c for c, v in crops.items() if sum(x.shape[0] == side for x in v) >= 2]
    pool = [x for x in crops[groups[rng.randrange(len(groups))]] if x.shape[0] == side]
    img = T.surface(pool, T.SIDE, rng)
    return np.clip(img * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255).astype(np.float32)


class Teacher:
    """The shipped detector as the look's teacher (`--teacher`): a cell's target is how
    close the detector comes there to reporting a defect at the line's thresholds, not
    where a labelled box lies. The look is a gate in front of this detector: a cell the
    detector would report nothing on is clean for the line, whatever its texture (the
    box-free surface of crazing and rolled-in scale images looks like their defects, and
    a look taught the boxes flags it all).

    Per 32 px cell, its ratio: the highest, over the classes, of the heat of its 8 px
    cells divided by that class's box threshold, and of the area output there divided by
    that class's area threshold (the detector reports from 1). The target is 1 from
    `band[1]` up, 0 below `band[0]`, and ignored between: a cell near a threshold is
    neither taught to be flagged nor to be passed."""

    def __init__(self, onnx_path, config_path, band=(0.5, 0.8)):
        import tomllib

        import onnx
        import onnxruntime as ort

        self.band = band

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        # The detector's file takes one frame; the teacher runs a batch at once (the graph
        # has no shape that depends on the batch).
        graph = onnx.load(onnx_path)
        for v in list(graph.graph.input) + list(graph.graph.output):
            v.type.tensor_type.shape.dim[0].dim_param = "n"
        self.sess = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        meta = json.load(open(os.path.splitext(onnx_path)[0] + ".json"))
        self.id, self.labels, out = meta["id"], meta["labels"], meta["output"]
        # Only heat and area say where the detector reports (a box is read at its peak).
        self.names = [out["heat"], out["area"]]
        decide = tomllib.load(open(config_path, "rb"))["decide"]
        default = decide.get("default_threshold", 0.5)
        self.box_thr = np.array([decide.get("thresholds", {}).get(c, default) for c in self.labels], np.float32)
        areas = decide.get("area_thresholds", {})
        # A class without an area threshold reports no area: its area output never counts.
        self.area_thr = np.array([areas.get(c, np.inf) for c in self.labels], np.float32)
        self.stride = out["stride"]

    def targets(self, imgs):
        """imgs: raw gray [n, side, side] (side a multiple of 32); the cells' targets
        [n, 1, side/32, side/32]."""
        side = imgs.shape[1]
        patches = F.pixel_unshuffle(torch.from_numpy(imgs)[:, None], T.PATCH).numpy()
        heat, area = self.sess.run(self.names, {"patches": patches})
        n, g, k = imgs.shape[0], side // CELL, CELL // self.stride
        ratio = (heat / self.box_thr[None, :, None, None]).max(axis=1)
        # A defect is reported at its heat peak (its box may reach past the tile: the
        # detector's window has a margin), so a cell's target is its own 8 px cells' best.
        t = ratio[:, :g * k, :g * k].reshape(n, g, k, g, k).max(axis=(2, 4))
        a = (area[:, :len(self.labels)] / self.area_thr[None, :, None, None]).max(axis=1)
        np.maximum(t, a[:, :g, :g], out=t)
        out = np.where(t >= self.band[1], 1.0, np.where(t < self.band[0], 0.0, -1.0))
        return out.astype(np.float32)[:, None]


def batches(items, crops, batch_size, rng, clean_share, laid_share=0.0, line_share=0.0, teacher=None):
    """Training images (a `laid_share` of them as a window of the image laid into clean
    surface: `train.py`'s `laid`) and `clean_share` as many defect-free negatives (a
    `line_share` of them surfaces of 96 px crops only, as clean frames are assembled).
    With a `teacher`, every input's targets are the detector's (Teacher), not the boxes'."""
    order = list(range(len(items))) + [-1] * int(round(clean_share * len(items)))
    rng.shuffle(order)
    for s in range(0, len(order) - batch_size + 1, batch_size):
        imgs, tgts = [], []
        for i in order[s:s + batch_size]:
            ignore = []
            if i < 0:
                if rng.random() < line_share:
                    img, boxes = line_negative(crops, rng), []
                else:
                    img, boxes = T.negative(crops, rng), []
            elif rng.random() < laid_share:
                img, boxes, ignore, _ = T.laid(items, crops, rng)
            else:
                img, boxes = T.augment(items[i]["img"], items[i]["boxes"], rng)
            if teacher is not None:
                imgs.append(img)
                continue
            t = cell_targets(boxes, T.SIDE)
            # A cell only a clipped box's remnant touches is neither defect nor clean.
            for x0, y0, x1, y1 in ignore:
                m = cell_targets([(0, x0, y0, x1, y1)], T.SIDE)
                t[(m > 0) & (t == 0)] = -1.0
            imgs.append(img)
            tgts.append(t)
        imgs = np.stack(imgs)
        tgts = teacher.targets(imgs) if teacher is not None else np.stack(tgts)
        yield torch.from_numpy(imgs)[:, None], torch.from_numpy(tgts)


def focal(logits, target, gamma=2.0, alpha=0.5):
    """Focal loss over the cells; a target of -1 is ignored."""
    keep = (target >= 0).float()
    target = target.clamp(min=0.0)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = p * target + (1 - p) * (1 - target)
    w = (alpha * target + (1 - alpha) * (1 - target)) * keep
    return (w * ce * (1 - pt) ** gamma).sum() / target.sum().clamp(min=1.0)


@torch.no_grad()
def validate(net, val, val_crops):
    """Per box: the highest cell probability among the cells it touches (a box is found
    at threshold t when that is >= t); per clean surface: every cell's probability."""
    net.eval()
    box_best, clean = [], []
    for it in val:
        x = torch.from_numpy(T.pad_to(it["img"], T.SIDE).astype(np.float32))[None, None]
        p = torch.sigmoid(net(x))[0, 0].numpy()
        for b in it["boxes"]:
            m = cell_targets([b], T.SIDE)[0] > 0
            if m.any():
                box_best.append(float(p[m].max()))
    rng = random.Random(7)
    line = []
    for make, probs in ((T.negative, clean), (line_negative, line)):
        for _ in range(60):
            x = torch.from_numpy(make(val_crops, rng))[None, None]
            probs.append(torch.sigmoid(net(x))[0, 0].numpy().ravel())
    clean, line = np.concatenate(clean), np.concatenate(line)
    box_best = np.array(box_best)
    out = {"boxes": len(box_best), "clean_cells": int(clean.size), "at": {}}
    for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5):
        out["at"][str(t)] = {"boxes_found": float((box_best >= t).mean()),
                             "clean_cells_flagged": float((clean >= t).mean()),
                             "clean_96px_cells_flagged": float((line >= t).mean())}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=os.path.join(T.HERE, "..", "..", "shared", "datasets", "neu"))
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clean-share", type=float, default=1.0)
    ap.add_argument("--laid-share", type=float, default=0.3,
                    help="share of training images laid into clean surface as a window (train.py's laid)")
    ap.add_argument("--line-share", type=float, default=0.5,
                    help="share of negatives that are surfaces of 96 px crops only, as clean frames are assembled")
    ap.add_argument("--c16", type=int, default=32, help="channels at 1/16")
    ap.add_argument("--c32", type=int, default=48, help="channels at 1/32")
    ap.add_argument("--pool", type=int, default=3, help="cells averaged around each cell before the output (odd)")
    ap.add_argument("--time-only", metavar="ONNX",
                    help="export the design with random weights to ONNX (for timing in tract and ONNX Runtime) and exit")
    ap.add_argument("--teacher", metavar="ONNX",
                    help="learn where this detector would report a defect (at --teacher-config's [decide] "
                         "thresholds), not where the labelled boxes lie")
    ap.add_argument("--teacher-band", type=float, nargs=2, default=(0.5, 0.8), metavar=("LO", "HI"),
                    help="a cell is clean below LO x the threshold, a defect from HI x, ignored between")
    ap.add_argument("--teacher-config", default=os.path.join(T.HERE, "..", "config", "inspectd.toml"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=T.HERE)
    a = ap.parse_args()

    t_start = time.time()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    rng = random.Random(a.seed)
    items = T.load_dataset(a.dataset)
    train, val = T.split(items, 0.2)
    crops, val_crops = T.clean_crops(train), T.clean_crops(val)
    mean, std = T.pixel_stats(train)
    net = Look(c16=a.c16, c32=a.c32, pool=a.pool)
    macs = T.count_macs(net, 1024, 1280)
    if a.time_only:
        g = T.SIDE // T.PATCH
        torch.onnx.export(Exported(net.eval(), 0.5, 0.2).eval(), torch.zeros(1, T.PATCH * T.PATCH, g, g), a.time_only,
                          input_names=["patches"], output_names=["look"],
                          dynamic_axes={"patches": {2: "h", 3: "w"}, "look": {2: "gh", 3: "gw"}},
                          opset_version=13, dynamo=False)
        print(f"{a.time_only}: c16 {a.c16}, c32 {a.c32}, {macs / 1e6:.0f} M multiply-adds per 1280x1024")
        return
    print(f"{len(train)} training images, {len(val)} held out; first look: "
          f"{sum(p.numel() for p in net.parameters())} parameters, {macs / 1e6:.0f} M multiply-adds per 1280x1024",
          flush=True)
    teacher = Teacher(a.teacher, a.teacher_config, tuple(a.teacher_band)) if a.teacher else None
    # What the targets came from: the labelled boxes, or a detector and its thresholds.
    teacher_id = None
    if teacher is not None:
        teacher_id = {"model": teacher.id,
                      "band": list(teacher.band),
                      "thresholds": dict(zip(teacher.labels, teacher.box_thr.tolist())),
                      "area_thresholds": {c: float(v) for c, v in zip(teacher.labels, teacher.area_thr) if np.isfinite(v)}}
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = int(len(train) * (1 + a.clean_share)) // a.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.epochs * steps, pct_start=0.1)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    a_mean, a_std = mean * 255.0, std * 255.0
    step = 0
    for epoch in range(a.epochs):
        net.train()
        total = 0.0
        for x, t in batches(train, crops, a.batch, rng, a.clean_share, a.laid_share, a.line_share, teacher):
            loss = focal(net((x - a_mean) / a_std), t)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            decay = min(0.998, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, m in zip(ema.state_dict().values(), net.state_dict().values()):
                    if e.dtype.is_floating_point:
                        e.mul_(decay).add_(m, alpha=1 - decay)
                    else:
                        e.copy_(m)
            total += loss.item()
        print(f"epoch {epoch + 1:3d}/{a.epochs}  focal {total / steps:.4f}  {time.time() - t_start:.0f} s", flush=True)
    train_seconds = time.time() - t_start
    net = ema
    metrics = validate(T.NormalisedNet(net, mean, std), val, val_crops)
    print(json.dumps(metrics), flush=True)

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"neu_look.metrics.s{a.seed}.json"), "w") as f:
        json.dump({"seed": a.seed, "epochs": a.epochs, "clean_share": a.clean_share, "laid_share": a.laid_share,
                   "line_share": a.line_share, "c16": a.c16, "c32": a.c32, "pool": a.pool, "macs_1280x1024": macs,
                   "teacher": teacher_id,
                   "train_seconds": round(train_seconds, 1), **metrics}, f, indent=1)
        f.write("\n")
    exported = Exported(net, mean, std).eval()
    path = os.path.join(a.out, "neu_look.onnx")
    g = T.SIDE // T.PATCH
    torch.onnx.export(exported, torch.zeros(1, T.PATCH * T.PATCH, g, g), path, input_names=["patches"],
                      output_names=["look"], dynamic_axes={"patches": {2: "h", 3: "w"}, "look": {2: "gh", 3: "gw"}},
                      opset_version=13, dynamo=False)
    exported.eval()
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    meta = {"id": f"neu-look-{sha[:12]}", "onnx": "neu_look.onnx", "sha256": sha,
            "input": {"layout": "NCHW", "channels": 1, "name": "patches", "patch": T.PATCH, "multiple": T.MULTIPLE},
            "output": {"look": "look", "stride": CELL},
            "trained": {"dataset": "NEU surface defect database, 1500-image copy", "seed": a.seed,
                        "split_seed": T.SPLIT_SEED, "epochs": a.epochs, "clean_share": a.clean_share,
                        "laid_share": a.laid_share, "line_share": a.line_share, "c16": a.c16, "c32": a.c32, "pool": a.pool,
                        "teacher": teacher_id, "train_images": len(train), "train_seconds": round(train_seconds, 1),
                        "macs_per_1280x1024": macs, "pixel_mean": mean, "pixel_std": std}}
    with open(os.path.join(a.out, "neu_look.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    reference = []
    for name in sorted(os.listdir(os.path.join(T.HERE, "samples"))):
        from PIL import Image
        img = np.asarray(Image.open(os.path.join(T.HERE, "samples", name)).convert("L"), dtype=np.uint8)
        with torch.no_grad():
            frame = torch.from_numpy(T.pad_to(img, T.SIDE).astype(np.float32))[None, None]
            look = exported(F.pixel_unshuffle(frame, T.PATCH))
        reference.append({"image": f"samples/{name}", "look": np.round(look[0, 0].numpy(), 7).ravel().tolist(),
                          "grid": [T.SIDE // CELL, T.SIDE // CELL]})
    with open(os.path.join(a.out, "neu_look.reference.json"), "w") as f:
        json.dump({"model": meta["id"], "source": "PyTorch", "tolerance": 1e-4, "images": reference}, f)
        f.write("\n")
    print(f"wrote {path} ({meta['id']}); training took {train_seconds:.0f} s")


if __name__ == "__main__":
    main()
