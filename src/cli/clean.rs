//! Defect-free steel for scoring false alarms: square crops cut from the box-free area of
//! labelled images, and camera-sized frames assembled from such crops.
//!
//! NEU holds no clean image: every image shows a defect, and the pixels outside all of
//! its boxes (kept `CLEAN_MARGIN` px away from each, since hand-drawn boxes are loose)
//! are the only defect-free surface there is. A frame is assembled the way
//! `models/train.py` assembles its negatives: crops of one surface (images of one class)
//! laid on a grid whose tiles overlap by a quarter and are cross-faded, each turned or
//! flipped and shifted to the frame's mean gray, so there is no hard seam for a model to
//! react to.

/// Pixels kept between a clean crop and every box.
pub const CLEAN_MARGIN: u32 = 8;

/// A square of defect-free surface.
#[derive(Debug, Clone)]
pub struct Crop {
    /// The surface it was cut from (the image's class), for assembling frames of one.
    pub group: usize,
    pub side: u32,
    pub pixels: Vec<u8>,
}

/// Cuts non-overlapping `side` x `side` squares of a `w` x `h` gray image, each at least
/// [`CLEAN_MARGIN`] px from every box (x0, y0, x1, y1), scanning rows top to bottom.
pub fn cut_crops(
    pixels: &[u8],
    w: u32,
    h: u32,
    boxes: &[[u32; 4]],
    side: u32,
    group: usize,
) -> Vec<Crop> {
    let (wu, hu) = (w as usize, h as usize);
    // blocked[y * w + x]: near a box, or already inside a crop taken.
    let mut blocked = vec![false; wu * hu];
    for b in boxes {
        let x0 = b[0].saturating_sub(CLEAN_MARGIN) as usize;
        let y0 = b[1].saturating_sub(CLEAN_MARGIN) as usize;
        let x1 = ((b[2] + CLEAN_MARGIN) as usize).min(wu);
        let y1 = ((b[3] + CLEAN_MARGIN) as usize).min(hu);
        for y in y0.min(hu)..y1 {
            blocked[y * wu + x0.min(x1)..y * wu + x1].fill(true);
        }
    }
    let s = side as usize;
    let mut out = Vec::new();
    if s == 0 || s > wu || s > hu {
        return out;
    }
    let step = 8;
    let mut y = 0;
    while y + s <= hu {
        let mut x = 0;
        let mut took = false;
        while x + s <= wu {
            let free = (y..y + s).all(|r| !blocked[r * wu + x..r * wu + x + s].contains(&true));
            if free {
                let mut px = Vec::with_capacity(s * s);
                for r in y..y + s {
                    px.extend_from_slice(&pixels[r * wu + x..r * wu + x + s]);
                    blocked[r * wu + x..r * wu + x + s].fill(true);
                }
                out.push(Crop {
                    group,
                    side,
                    pixels: px,
                });
                took = true;
                x += s;
            } else {
                x += step;
            }
        }
        y += if took { s } else { step };
    }
    out
}

/// `count` camera-sized (`w` x `h`) defect-free frames from `crops`: frame k is assembled
/// from the crops of the k-th surface (group) in turn, the same frames on every run.
/// Returns each frame's group and pixels; none without crops.
pub fn clean_frames(crops: &[Crop], count: usize, (w, h): (u32, u32)) -> Vec<(usize, Vec<u8>)> {
    let mut groups: Vec<usize> = crops.iter().map(|c| c.group).collect();
    groups.sort_unstable();
    groups.dedup();
    if groups.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng::new(20261202);
    (0..count)
        .map(|k| {
            let g = groups[k % groups.len()];
            let group: Vec<&Crop> = crops.iter().filter(|c| c.group == g).collect();
            (g, assemble_frame(&group, w, h, &mut rng))
        })
        .collect()
}

/// Pixels over which [`lay_in`] cross-fades a laid image's border into the surface.
pub const LAY_FEATHER: f32 = 12.0;

/// Lays a `w` x `h` image into the frame (`fw` wide) at (x, y) as a defect lies on a
/// strip, not as a pasted photo: its gray level moved to the mean of the surface under it
/// and its border cross-faded over [`LAY_FEATHER`] px. A hard-edged square of another gray
/// has four straight edges a detector rightly reads as scratches. The fade reaches a
/// labelled box only where the box reaches its image's border. The image must fit.
#[allow(clippy::too_many_arguments)]
pub fn lay_in(frame: &mut [u8], fw: u32, img: &[u8], w: u32, h: u32, x: u32, y: u32) {
    let (fw, w, h, x, y) = (fw as usize, w as usize, h as usize, x as usize, y as usize);
    assert!(
        x + w <= fw && (y + h) * fw <= frame.len(),
        "the image fits the frame"
    );
    let mut under = 0f64;
    for j in 0..h {
        under += frame[(y + j) * fw + x..(y + j) * fw + x + w]
            .iter()
            .map(|&p| p as f64)
            .sum::<f64>();
    }
    let own = img.iter().map(|&p| p as f64).sum::<f64>();
    let shift = ((under - own) / (w * h).max(1) as f64) as f32;
    for j in 0..h {
        for i in 0..w {
            let edge = i.min(j).min(w - 1 - i).min(h - 1 - j) as f32 + 0.5;
            let a = (edge / LAY_FEATHER).min(1.0);
            let p = &mut frame[(y + j) * fw + x + i];
            let laid = (img[j * w + i] as f32 + shift).clamp(0.0, 255.0);
            *p = (a * laid + (1.0 - a) * *p as f32).round() as u8;
        }
    }
}

/// A small deterministic generator (SplitMix64): the same frames on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// A `w` x `h` defect-free frame from `crops` (all of one side): tiles overlapping by a
/// quarter of their side, cross-faded with linear ramps, each crop turned by a multiple of
/// 90 degrees or mirrored at random and shifted to a common mean gray level.
pub fn assemble_frame(crops: &[&Crop], w: u32, h: u32, rng: &mut Rng) -> Vec<u8> {
    assert!(!crops.is_empty(), "a frame needs crops");
    let t = crops[0].side as usize;
    let o = (t / 4).max(1);
    let pitch = t - o;
    let (wu, hu) = (w as usize, h as usize);
    let ramp: Vec<f32> = (0..t)
        .map(|i| {
            let edge = (i as f32 + 0.5).min(t as f32 - i as f32 - 0.5);
            (edge / o as f32).min(1.0)
        })
        .collect();
    let mean = |c: &Crop| c.pixels.iter().map(|&p| p as f64).sum::<f64>() / c.pixels.len() as f64;
    let level = mean(crops[rng.below(crops.len())]) as f32;
    let mut acc = vec![0f32; wu * hu];
    let mut wsum = vec![0f32; wu * hu];
    let (oy, ox) = (rng.below(pitch), rng.below(pitch));
    let mut ty = -(oy as isize);
    while ty < hu as isize {
        let mut tx = -(ox as isize);
        while tx < wu as isize {
            let c = crops[rng.below(crops.len())];
            let (turn, mirror) = (rng.below(4), rng.below(2) == 1);
            let shift = level - mean(c) as f32;
            for j in 0..t {
                let y = ty + j as isize;
                if y < 0 || y >= hu as isize {
                    continue;
                }
                for i in 0..t {
                    let x = tx + i as isize;
                    if x < 0 || x >= wu as isize {
                        continue;
                    }
                    // Source pixel of the turned / mirrored crop at (i, j).
                    let (mut u, v) = match turn {
                        0 => (i, j),
                        1 => (j, t - 1 - i),
                        2 => (t - 1 - i, t - 1 - j),
                        _ => (t - 1 - j, i),
                    };
                    if mirror {
                        u = t - 1 - u;
                    }
                    let p = c.pixels[v * t + u] as f32 + shift;
                    let wgt = ramp[i] * ramp[j] + 1e-4;
                    let k = y as usize * wu + x as usize;
                    acc[k] += p * wgt;
                    wsum[k] += wgt;
                }
            }
            tx += pitch as isize;
        }
        ty += pitch as isize;
    }
    acc.iter()
        .zip(&wsum)
        .map(|(a, s)| (a / s).round().clamp(0.0, 255.0) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_keep_clear_of_every_box_and_of_each_other() {
        let (w, h) = (200u32, 200u32);
        let px: Vec<u8> = (0..w * h).map(|i| (i % 251) as u8).collect();
        let boxes = [[0, 0, 100, 200]];
        let crops = cut_crops(&px, w, h, &boxes, 64, 3);
        // Free from x = 108 (scanned in steps of 8: 112): one column of 64 px squares.
        assert_eq!(crops.len(), 3);
        for c in &crops {
            assert_eq!((c.group, c.side, c.pixels.len()), (3, 64, 64 * 64));
        }
        // The first crop is the square at (108, 0).
        assert_eq!(crops[0].pixels[0], px[112]);
        assert!(cut_crops(&px, w, h, &[[0, 0, 200, 200]], 64, 0).is_empty());
    }

    #[test]
    fn a_laid_image_takes_the_surface_gray_and_fades_in_at_its_border() {
        // A flat surface at 100, an image at 40 with a bright dot: laid, the image's gray
        // is the surface's, the dot keeps its contrast, and the border is the surface's.
        let (fw, fh) = (40u32, 30u32);
        let mut frame = vec![100u8; (fw * fh) as usize];
        let (w, h) = (30u32, 30u32);
        let mut img = vec![40u8; (w * h) as usize];
        img[(15 * w + 15) as usize] = 70;
        lay_in(&mut frame, fw, &img, w, h, 5, 0);
        let at = |x: u32, y: u32| frame[(y * fw + x) as usize];
        // The mean of the image (40.03) moved to 100: the dot 30 above it.
        assert_eq!(at(20, 15), 130);
        assert_eq!(at(18, 15), 100);
        // Outside the image, untouched; its outermost pixel barely moved.
        assert_eq!(at(0, 0), 100);
        assert_eq!(at(5, 0), 100);
        assert_eq!(frame.iter().filter(|&&p| p != 100).count(), 1);
    }

    #[test]
    fn an_assembled_frame_has_no_seams_brighter_or_darker_than_its_tiles() {
        // Two flat crops of different gray: shifted to one level, the frame is flat.
        let a = Crop {
            group: 0,
            side: 32,
            pixels: vec![100; 32 * 32],
        };
        let b = Crop {
            group: 0,
            side: 32,
            pixels: vec![140; 32 * 32],
        };
        let frame = assemble_frame(&[&a, &b], 100, 70, &mut Rng::new(1));
        assert_eq!(frame.len(), 100 * 70);
        let level = frame[0];
        assert!(level == 100 || level == 140);
        assert!(frame.iter().all(|&p| p == level));
        // A textured crop keeps its texture's range.
        let c = Crop {
            group: 0,
            side: 32,
            pixels: (0..32 * 32).map(|i| (90 + i % 21) as u8).collect(),
        };
        let frame = assemble_frame(&[&c], 64, 64, &mut Rng::new(2));
        assert!(frame.iter().all(|&p| (85..=115).contains(&p)));
    }
}
