"""Decode rules probed on a screen's inner validation (the 240 images `train.py --inner-val`
holds out of its 960; the 300 held-out images are never read): each rule re-scores or
re-shapes the same net's peaks, and the AP@0.5 per class is computed as train.py does.

    models/.venv/bin/python models/probe_decode.py RUN/neu_det.pt [RUN2/neu_det.pt ...]

Each `neu_det.pt` must come from a `--inner-val` run (train.py writes it beside the
metrics), of the `deep` design unless `--design` names another. With `--ensemble`, the
nets given are also read as one: their heat probabilities, box distances and class
probabilities averaged cell by cell (what a teacher made of them gives `train.py
--teacher`), a last column. Nothing here changes a model or what inspectd reports.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as T  # noqa: E402


def inner_validation(dataset, train_share=1.0):
    """The inner split of `train.py --inner-val` and its training pixels' mean and spread
    (of the share it trained on, with `--train-share`)."""
    train, val = T.split(T.load_dataset(dataset), 0.2, inner_val=True)
    if train_share < 1.0:
        train = T.subset(train, train_share)
    return (val, *T.pixel_stats(train))


@torch.no_grad()
def outputs(weights, val, mean, std, design="deep"):
    """Per image: heat, boxes, the image head's and the 96 px windows' class probabilities."""
    net = T.Detector(design)
    net.load_state_dict(torch.load(weights))
    net = T.NormalisedNet(net, mean, std).eval()
    out = []
    for it in val:
        x = torch.from_numpy(T.pad_to(it["img"], T.SIDE).astype(np.float32))[None, None]
        heat, box, image, area = net(x, area_window=3)
        out.append((torch.sigmoid(heat)[0], box[0], torch.softmax(image[0], 0), torch.softmax(area[0], 0), it))
    return out


def averaged(runs):
    """The nets' outputs per image averaged (train.py's `mean_of`, as `--teacher` averages
    its teachers): one ensemble's outputs, in `outputs`' form."""
    return [(*T.mean_of([o[:4] for o in per_image]), per_image[0][4]) for per_image in zip(*runs)]


def fused(found, thr):
    """Weighted box fusion: peaks of one class overlapping a kept one by more than `thr`
    move its box to their score-weighted mean; the kept score is the highest."""
    kept = []
    for c, s, *b in found:
        for k in kept:
            if k[0] == c and T.iou(k[2], b) > thr:
                k[1].append((s, b))
                total = sum(m[0] for m in k[1])
                k[2] = [sum(m[0] * m[1][i] for m in k[1]) / total for i in range(4)]
                break
        else:
            kept.append([c, [(s, b)], list(b)])
    return [(c, max(m[0] for m in members), *b) for c, members, b in kept]


def voted(heat, box, nms):
    """Each peak's box the mean of the boxes its 3 x 3 neighbourhood predicts (as corners),
    weighted by the heat of the peak's class there: one cell's regression noise averaged
    out. Peaks, scores and suppression as `T.decode`, class by class (its 50 highest peaks
    of each, then the 50 highest of all)."""
    x0y0x1y1 = T.corners(box[None])[0]
    cx, cy = T.cell_centres(box.shape[-1])
    found = []
    for c in range(heat.shape[0]):
        wgt = heat[c][None, None]
        total = F.avg_pool2d(wgt, 3, 1, 1)
        mean = F.avg_pool2d(wgt * x0y0x1y1[None], 3, 1, 1) / total.clamp(min=1e-9)
        dist = torch.stack([cx - mean[0, 0], cy - mean[0, 1], mean[0, 2] - cx, mean[0, 3] - cy])
        only = torch.zeros_like(heat)
        only[c] = heat[c]
        found += T.decode(only, dist, nms_iou=nms)
    return sorted(found, key=lambda d: -d[1])[:50]


def dense(heat, box, k, nms, around_peaks=False, soft=0.0):
    """Every cell a candidate, not only the 3 x 3 peaks (as YOLO's grid: each cell's box at
    its own heat), surest first (the 4 k surest cells at most, from 0.01): a box
    overlapping a kept one of its class by more than `nms` is dropped, until `k` are kept.
    A defect whose extent is ambiguous (a crazed band drawn whole on one image and in
    pieces on the next) keeps a second box of another size where a cell beside the peak
    predicts one. With `around_peaks`, only the peaks and the 8 cells around each. With
    `soft` (Gaussian soft-NMS's sigma), an overlapping box is not dropped but its score
    multiplied by exp(-IoU^2 / soft) each time a surer box of its class is kept."""
    heat = torch.as_tensor(heat)
    keep = heat
    if around_peaks:
        peak = (F.max_pool2d(heat[None], 3, 1, 1)[0] == heat).float()
        keep = heat * (F.max_pool2d(peak[None], 3, 1, 1)[0] > 0)
    c, g_h, g_w = heat.shape
    scores, idx = keep.reshape(-1).topk(min(4 * k, c * g_h * g_w))
    cand = []
    for s, i in zip(scores.tolist(), idx.tolist()):
        if s < 0.01:
            break
        cls, rem = divmod(i, g_h * g_w)
        iy, ix = divmod(rem, g_w)
        l, t, r, b = box[:, iy, ix].tolist()
        x, y = (ix + 0.5) * T.STRIDE, (iy + 0.5) * T.STRIDE
        cand.append((cls, s, x - l, y - t, x + r, y + b))
    out = []
    if soft:
        while cand and len(out) < k:
            best = max(range(len(cand)), key=lambda j: cand[j][1])
            d = cand.pop(best)
            out.append(d)
            cand = [(o[0], o[1] * (np.exp(-T.iou(o[2:], d[2:]) ** 2 / soft) if o[0] == d[0] else 1.0)) + o[2:]
                    for o in cand]
            cand = [o for o in cand if o[1] >= 0.01]
        return out
    for d in cand:
        if len(out) == k:
            break
        if not any(o[0] == d[0] and T.iou(o[2:], d[2:]) > nms for o in out):
            out.append(d)
    return out


def detections(out, nms=0.5, image_power=0.0, area_power=0.0, grow=1.0, fuse=None, vote=False, dense_k=0,
               around_peaks=False, soft=0.0):
    dets, truth = [], {}
    for heat, box, p_image, p_area, it in out:
        h, w = it["img"].shape
        truth[it["stem"]] = [tuple(b) for b in it["boxes"]]
        if dense_k:
            found = dense(heat, box, dense_k, nms, around_peaks, soft)
        elif vote:
            found = voted(heat, box, nms)
        elif fuse:
            found = fused(T.decode(heat, box, nms_iou=1.01), fuse)
        else:
            found = T.decode(heat, box, nms_iou=nms)
        for c, s, x0, y0, x1, y1 in found:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            hw, hh = (x1 - x0) / 2 * grow, (y1 - y0) / 2 * grow
            s *= float(p_image[c]) ** image_power
            if area_power:
                ay = min(max(int(cy // 32), 0), p_area.shape[1] - 1)
                ax = min(max(int(cx // 32), 0), p_area.shape[2] - 1)
                s *= float(p_area[c, ay, ax]) ** area_power
            dets.append((c, it["stem"], s, (max(cx - hw, 0), max(cy - hh, 0), min(cx + hw, w), min(cy + hh, h))))
    ap = {}
    for c, name in enumerate(T.CLASSES):
        ap[name] = T.average_precision([(i, s, b) for cc, i, s, b in dets if cc == c], truth, c, 0.5)
    return float(np.mean(list(ap.values()))), ap


RULES = [
    ("as inspectd decodes (model.nms_iou 0.5)", {}),
    ("score times the image head's probability of the class, square root", {"image_power": 0.5}),
    ("score times the image head's probability of the class", {"image_power": 1.0}),
    ("score times the 96 px window's probability of the class, square root", {"area_power": 0.5}),
    ("score times the 96 px window's probability of the class", {"area_power": 1.0}),
    ("boxes grown by a tenth", {"grow": 1.1}),
    ("boxes shrunk by a tenth", {"grow": 0.9}),
    ("suppression at IoU 0.3", {"nms": 0.3}),
    ("suppression at IoU 0.6", {"nms": 0.6}),
    ("suppression at IoU 0.7", {"nms": 0.7}),
    ("weighted box fusion at IoU 0.5", {"fuse": 0.5}),
    ("weighted box fusion at IoU 0.6", {"fuse": 0.6}),
    ("each peak's box voted by its 3 x 3 neighbourhood, weighted by its class's heat", {"vote": True}),
    ("every cell a candidate, 50 surest kept, suppression at IoU 0.5", {"dense_k": 50}),
    ("every cell a candidate, 100 surest kept, suppression at IoU 0.5", {"dense_k": 100}),
    ("the peaks and the 8 cells around each, 100 kept, suppression at IoU 0.5",
     {"dense_k": 100, "around_peaks": True}),
    ("every cell a candidate, 100 surest kept, suppression at IoU 0.3", {"dense_k": 100, "nms": 0.3}),
    ("every cell a candidate, 100 surest kept, suppression at IoU 0.6", {"dense_k": 100, "nms": 0.6}),
    ("every cell a candidate, 100 surest kept, suppression at IoU 0.7", {"dense_k": 100, "nms": 0.7}),
    ("every cell a candidate, 100 surest kept, Gaussian soft suppression (sigma 0.5)", {"dense_k": 100, "soft": 0.5}),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", help="neu_det.pt of --inner-val runs")
    ap.add_argument("--dataset", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets", "neu"))
    ap.add_argument("--ensemble", action="store_true", help="also score the nets' average (a last column)")
    ap.add_argument("--design", choices=sorted(T.DESIGNS), default="deep", help="the nets' design (train.py --design)")
    ap.add_argument("--train-share", type=float, default=1.0,
                    help="the nets' train.py --train-share (their input normalisation comes from those images)")
    a = ap.parse_args()
    for w in a.weights:
        if not os.path.isfile(w):
            ap.error(f"{w}: no such file (a neu_det.pt written by train.py --inner-val)")
    torch.set_num_threads(1)
    val, mean, std = inner_validation(a.dataset, a.train_share)
    runs = [outputs(w, val, mean, std, a.design) for w in a.weights]
    names = list(a.weights)
    if a.ensemble:
        if len(runs) < 2:
            ap.error("--ensemble needs two nets or more")
        runs.append(averaged(runs))
        names.append(f"average of the {len(a.weights)}")
    print("rule | " + " | ".join(names))
    for name, rule in RULES:
        cells = []
        for out in runs:
            m, ap50 = detections(out, **rule)
            cells.append(f"{m:.4f} (crazing {ap50['crazing']:.3f}, rolled-in {ap50['rolled-in_scale']:.3f})")
        print(f"{name} | " + " | ".join(cells), flush=True)
    print("\nAP@0.5 per class, as inspectd decodes")
    for name, out in zip(names, runs):
        m, ap50 = detections(out)
        print(f"{name}: mAP {m:.4f}  " + "  ".join(f"{c} {v:.3f}" for c, v in ap50.items()), flush=True)


if __name__ == "__main__":
    main()
