# AP per class at IoU 0.3 / 0.5 / 0.7 on the TRAINING images of models/neu_det.split.json,
# decoded as inspectd decodes them (3 x 3 peaks from 0.05, suppression at IoU 0.5), and
# how many truth boxes no detection of their class reaches at IoU 0.5. Where a class's AP
# is lost: finding the defect, or fitting its box. Usage:
#   models/.venv/bin/python models/ap_by_iou.py [model.onnx]
import json, os, sys, re, numpy as np, onnxruntime as ort
from PIL import Image
neu = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets", "neu")
split = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "neu_det.split.json")))
names = split["train"]
sess = ort.InferenceSession(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "neu_det.onnx"))
C = ["crazing","inclusion","patches","pitted_surface","rolled-in_scale","scratches"]
def boxes(n):
    t = open(f"{neu}/ANNOTATIONS/{n}.xml").read()
    out = []
    for o in re.findall(r"<object>(.*?)</object>", t, re.S):
        c = re.search(r"<name>(.*?)</name>", o).group(1)
        b = [int(re.search(f"<{k}>(\\d+)</{k}>", o).group(1)) for k in ("xmin","ymin","xmax","ymax")]
        out.append((C.index(c), [b[0]-1, b[1]-1, b[2], b[3]]))
    return out
def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0])); iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    i = ix * iy; u = (a[2]-a[0])*(a[3]-a[1]) + (b[2]-b[0])*(b[3]-b[1]) - i
    return i / u if u > 0 else 0
dets = {c: [] for c in range(6)}; truth = {c: {} for c in range(6)}
for k, n in enumerate(names):
    n = n.rsplit(".", 1)[0]
    img = np.array(Image.open(f"{neu}/IMAGES/{n}.png").convert("L"), dtype=np.float32)
    h, w = img.shape; P = 224
    pad = np.pad(img, ((0, P-h), (0, P-w)), mode="edge")
    x = pad.reshape(P//8, 8, P//8, 8).transpose(1, 3, 0, 2).reshape(1, 64, P//8, P//8)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"patches": x})))
    heat, box = outs["heat"][0], outs["box"][0]
    for c, b in boxes(n):
        truth[c].setdefault(k, []).append(b)
    for c in range(6):
        hm = heat[c]; g = hm.shape[0]
        for yy in range(min(g, (h+7)//8)):
            for xx in range(min(g, (w+7)//8)):
                v = hm[yy, xx]
                if v < 0.05: continue
                nb = hm[max(0,yy-1):yy+2, max(0,xx-1):xx+2]
                if v < nb.max(): continue
                cx, cy = xx*8+4, yy*8+4
                l, t, r, bt = box[:, yy, xx]
                rect = [max(0, cx-l), max(0, cy-t), min(w, cx+r), min(h, cy+bt)]
                dets[c].append((float(v), k, rect))
def nms(ds):
    out = []
    by = {}
    for d in sorted(ds, key=lambda d: -d[0]): by.setdefault(d[1], []).append(d)
    for k, l in by.items():
        keep = []
        for d in l:
            if all(iou(d[2], e[2]) <= 0.5 for e in keep): keep.append(d)
        out += keep
    return out
def ap(c, thr):
    ds = sorted(nms(dets[c]), key=lambda d: -d[0]); T = truth[c]; n = sum(len(v) for v in T.values())
    used = {k: [False]*len(v) for k, v in T.items()}; tp = []
    for s, k, r in ds:
        best, bi = 0, -1
        for i, b in enumerate(T.get(k, [])):
            o = iou(r, b)
            if o > best and not used[k][i]: best, bi = o, i
        if best >= thr: used[k][bi] = True; tp.append(1)
        else: tp.append(0)
    tp = np.array(tp); ctp = np.cumsum(tp); prec = ctp / np.arange(1, len(tp)+1); rec = ctp / n
    mp = np.maximum.accumulate(prec[::-1])[::-1]
    a = 0; prev = 0
    for i in range(len(rec)):
        a += (rec[i] - prev) * mp[i]; prev = rec[i]
    return a, rec[-1] if len(rec) else 0
for c in range(6):
    r = [ap(c, t) for t in (0.3, 0.5, 0.7)]
    # best IoU any detection reaches per truth box
    bests = []
    for k, bs in truth[c].items():
        for b in bs:
            bests.append(max([iou(d[2], b) for d in dets[c] if d[1] == k] or [0]))
    bests = np.array(bests)
    print(f"{C[c]:16s} AP@.3 {r[0][0]:.3f} AP@.5 {r[1][0]:.3f} AP@.7 {r[2][0]:.3f} | max recall@.5 {r[1][1]:.3f} | truth boxes {len(bests)}, best-IoU median {np.median(bests):.2f}, <0.5 {np.mean(bests<0.5):.2f}")
