//! The nets' patch stem, run in our own code.
//!
//! Both of inspectd's nets begin the same way: the frame as `patch` x `patch` pixel
//! patches laid out as channels, a 1x1 convolution over them and a ReLU. In tract that
//! stem is three passes over a frame-sized float tensor (the patches written out,
//! copied into the matrix layout, packed) around a cheap product. Here it is one pass
//! over the gray pixels, straight to the ReLU's output, and tract runs the rest of the
//! net from there. [`Stem::find`] reads the stem's weights from the ONNX file and names
//! the node the rest starts from; a net that does not begin this way runs whole in tract.

use tract_onnx::pb;
use tract_onnx::prelude::*;

use crate::stages::rewrite::{is_pointwise_conv, readers};

/// A 1x1 convolution over the frame's patches and its ReLU.
#[derive(Debug, Clone)]
pub struct Stem {
    /// Output channels.
    channels: usize,
    patch: usize,
    /// `weights[k * channels + c]`: from patch pixel `k` (`dy * patch + dx`) to output `c`,
    /// with the input's normalisation folded in.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// A window of a gray frame, read as the padded frame reads there: `size` pixels from
/// `origin`, the frame's last row and column repeated past its edges.
#[derive(Debug, Clone, Copy)]
pub struct FrameWindow<'a> {
    /// The frame's gray pixels, `frame.0` a row.
    pub pixels: &'a [u8],
    /// The frame's width and height.
    pub frame: (usize, usize),
    pub origin: (usize, usize),
    /// The window's width and height, multiples of the patch.
    pub size: (usize, usize),
}

/// The stem's buffers, kept between frames so that a frame allocates nothing once sizes
/// are settled: a band of frame rows, and a row of outputs before it is split into planes.
#[derive(Debug, Default)]
pub struct Scratch {
    rows: Vec<f32>,
    out: Vec<f32>,
}

/// Where a net's stem ends: the stem, and the name of its ReLU node, whose output is the
/// input of the rest of the net.
#[derive(Debug, Clone)]
pub struct Cut {
    pub stem: Stem,
    pub relu: String,
}

impl Stem {
    /// The stem of `proto`, if it has one: the graph's only input read by one node, a 1x1
    /// convolution (stride 1, no padding, one group) from `patch * patch` channels, whose
    /// output only a named ReLU reads. `scale` and `offset` are the input's normalisation
    /// (each pixel enters the net as `p * scale + offset`) and are folded into the weights.
    pub fn find(proto: &pb::ModelProto, patch: usize, scale: f32, offset: f32) -> Option<Cut> {
        let graph = proto.graph.as_ref()?;
        let initializer = |name: &str| graph.initializer.iter().find(|t| t.name == name);
        let inputs: Vec<&str> = graph
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|n| initializer(n).is_none())
            .collect();
        let [input] = inputs[..] else { return None };
        let [conv] = readers(graph, input)[..] else {
            return None;
        };
        if conv.input.first().map(String::as_str) != Some(input) || !is_pointwise_conv(graph, conv)
        {
            return None;
        }
        let out = conv.output.first()?;
        if graph.output.iter().any(|o| &o.name == out) {
            return None;
        }
        let [relu] = readers(graph, out)[..] else {
            return None;
        };
        if relu.op_type != "Relu" || relu.name.is_empty() {
            return None;
        }
        // The rest of the net starts at the ReLU's output; one that is also a graph
        // output would keep the stem in tract's graph.
        if graph.output.iter().any(|o| relu.output.contains(&o.name)) {
            return None;
        }
        let load = |name: &str| -> Option<Tensor> {
            let t = initializer(name)?;
            tract_onnx::tensor::load_tensor(&*tract_onnx::onnx().provider, t, None)
                .ok()?
                .cast_to::<f32>()
                .ok()
                .map(|t| t.into_owned())
        };
        let w = load(conv.input.get(1)?)?;
        let k = patch * patch;
        let [channels, kin, 1, 1] = w.shape() else {
            return None;
        };
        let (channels, kin) = (*channels, *kin);
        if kin != k || channels == 0 {
            return None;
        }
        let w_view = w.try_as_plain_ram().ok()?;
        let w = w_view.as_slice::<f32>().ok()?;
        let bias: Vec<f32> = match conv.input.get(2).filter(|b| !b.is_empty()) {
            Some(name) => {
                let b = load(name)?;
                if b.shape() != [channels] {
                    return None;
                }
                let view = b.try_as_plain_ram().ok()?;
                view.as_slice::<f32>().ok()?.to_vec()
            }
            None => vec![0.0; channels],
        };
        // out_c = bias_c + sum_k w_ck (scale p_k + offset)
        let mut weights = vec![0.0; k * channels];
        let mut folded = bias;
        for c in 0..channels {
            for i in 0..k {
                let wv = w[c * k + i];
                weights[i * channels + c] = wv * scale;
                folded[c] += wv * offset;
            }
        }
        Some(Cut {
            stem: Stem {
                channels,
                patch,
                weights,
                bias: folded,
            },
            relu: relu.name.clone(),
        })
    }

    /// `model` (read from `proto`) with its stem cut off, and the stem, when it has one
    /// ([`Stem::find`]); else `model` as it is.
    pub fn cut(
        proto: &pb::ModelProto,
        model: InferenceModel,
        patch: usize,
        scale: f32,
        offset: f32,
    ) -> TractResult<(InferenceModel, Option<Stem>)> {
        match Stem::find(proto, patch, scale, offset) {
            Some(cut) => Ok((Stem::body(&model, &cut.relu)?, Some(cut.stem))),
            None => Ok((model, None)),
        }
    }

    /// The channels a net's input has: the stem's outputs when `stem` runs in inspectd,
    /// else the `patch * patch` pixels of a patch.
    pub fn input_channels(stem: Option<&Stem>, patch: usize) -> usize {
        stem.map_or(patch * patch, |s| s.channels)
    }

    /// The rest of `model` after the stem: the consumers of `relu`'s output read a new
    /// input instead, and what only the stem needed is dropped.
    pub fn body(model: &InferenceModel, relu: &str) -> TractResult<InferenceModel> {
        let mut m = model.clone();
        let id = m.node_id_by_name(relu)?;
        let readers: Vec<InletId> = m.node(id).outputs[0].successors.to_vec();
        let input = m.add_source("stem", InferenceFact::default())?;
        for inlet in readers {
            m.add_edge(input, inlet)?;
        }
        m.set_input_outlets(&[input])?;
        m.into_compact()
    }

    /// Output channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The stem's output for the window `at`: `[channels, size.1 / patch, size.0 /
    /// patch]` into `dst`.
    pub fn run(&self, at: FrameWindow, scratch: &mut Scratch, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if wide::has_avx512() {
                // SAFETY: the CPU was checked for AVX-512F just now.
                return unsafe { wide::run_avx512(self, at, scratch, dst) };
            }
            if wide::has_avx2_fma() {
                // SAFETY: the CPU was checked for AVX2 and FMA just now.
                return unsafe { wide::run_avx2(self, at, scratch, dst) };
            }
        }
        run_generic::<false, false>(self, at, scratch, dst)
    }
}

/// The stem over a window; `FMA` says whether a multiply-add is one instruction here
/// (then `mul_add` is used, else it would call the C library), `ZMM` whether AVX-512's
/// 32 vector registers are there to hold more patches' sums at once.
#[inline(always)]
fn run_generic<const FMA: bool, const ZMM: bool>(
    s: &Stem,
    at: FrameWindow,
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    match s.channels {
        _ if s.patch != 8 => rows_any(s, at, scratch, dst),
        16 => rows_of::<16, 8, 4, FMA>(s, at, scratch, dst),
        32 => rows_of::<32, 8, 2, FMA>(s, at, scratch, dst),
        // Two patches' 64 sums fill 8 of AVX-512's 32 registers, but all 16 of AVX2's.
        64 if ZMM => rows_of::<64, 8, 2, FMA>(s, at, scratch, dst),
        64 => rows_of::<64, 8, 1, FMA>(s, at, scratch, dst),
        _ => rows_any(s, at, scratch, dst),
    }
}

/// Copies the `patch` frame rows of the window's patch row `y` into `rows` (`patch` x
/// the window's width) as floats, each clamped to the frame as the padding repeats it.
#[inline(always)]
fn band(at: FrameWindow, patch: usize, y: usize, rows: &mut [f32]) {
    let ((w, h), (ox, oy), pw) = (at.frame, at.origin, at.size.0);
    // Columns inside the frame; a window wholly past its last column has none.
    let (ox, inside) = (ox.min(w), w.saturating_sub(ox).min(pw));
    for dy in 0..patch {
        let src = &at.pixels[(oy + y * patch + dy).min(h - 1) * w..][..w];
        let out = &mut rows[dy * pw..][..pw];
        for (o, &v) in out[..inside].iter_mut().zip(&src[ox..ox + inside]) {
            *o = v as f32;
        }
        out[inside..].fill(src[w - 1] as f32);
    }
}

/// The stem for `C` channels over `P` x `P` patches, `N` patches at a time (so that `N`
/// independent chains of multiply-adds keep the units busy, each weight loaded once for
/// them). A patch's `C` sums stay in registers through its `P * P` pixels; a row of
/// patches is written pixel-major, then turned into the `C` planes the net reads.
#[inline(always)]
fn rows_of<const C: usize, const P: usize, const N: usize, const FMA: bool>(
    s: &Stem,
    at: FrameWindow,
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    let (pw, ph) = at.size;
    let (gw, gh) = (pw / P, ph / P);
    scratch.rows.resize(P * pw, 0.0);
    scratch.out.resize(gw * C, 0.0);
    let (weights, _) = s.weights.as_chunks::<C>();
    let weights = &weights[..P * P];
    let bias: [f32; C] = s.bias[..C].try_into().expect("C channels");
    for y in 0..gh {
        band(at, P, y, &mut scratch.rows);
        let rows = &scratch.rows[..];
        let (cells, _) = scratch.out.as_chunks_mut::<C>();
        let mut x = 0;
        while x < gw {
            // N patches, or one at the row's end.
            if x + N <= gw {
                let acc = block::<C, P, N, FMA>(rows, pw, x, weights, &bias);
                cells[x..x + N].copy_from_slice(&acc);
                x += N;
            } else {
                let [acc] = block::<C, P, 1, FMA>(rows, pw, x, weights, &bias);
                cells[x] = acc;
                x += 1;
            }
        }
        for c in 0..C {
            let plane = &mut dst[(c * gh + y) * gw..][..gw];
            for (o, cell) in plane.iter_mut().zip(scratch.out.as_chunks::<C>().0) {
                *o = cell[c];
            }
        }
    }
}

/// The ReLU'd sums of `M` patches side by side from patch column `x` of the band `rows`.
#[inline(always)]
fn block<const C: usize, const P: usize, const M: usize, const FMA: bool>(
    rows: &[f32],
    pw: usize,
    x: usize,
    weights: &[[f32; C]],
    bias: &[f32; C],
) -> [[f32; C]; M] {
    let mut acc = [*bias; M];
    for dy in 0..P {
        let row = &rows[dy * pw + x * P..][..M * P];
        for dx in 0..P {
            let wk = &weights[dy * P + dx];
            for (j, a) in acc.iter_mut().enumerate() {
                let v = row[j * P + dx];
                for c in 0..C {
                    a[c] = if FMA {
                        wk[c].mul_add(v, a[c])
                    } else {
                        a[c] + wk[c] * v
                    };
                }
            }
        }
    }
    for a in &mut acc {
        for v in a.iter_mut() {
            *v = v.max(0.0);
        }
    }
    acc
}

/// Any other number of channels (or patches past 16 x 16): plain loops.
fn rows_any(s: &Stem, at: FrameWindow, scratch: &mut Scratch, dst: &mut [f32]) {
    let ((pw, ph), p, c_n) = (at.size, s.patch, s.channels);
    let (gw, gh) = (pw / p, ph / p);
    scratch.rows.resize(p * pw, 0.0);
    let rows = &mut scratch.rows;
    for y in 0..gh {
        band(at, p, y, rows);
        for x in 0..gw {
            for c in 0..c_n {
                let mut a = s.bias[c];
                for dy in 0..p {
                    for dx in 0..p {
                        let v = rows[dy * pw + x * p + dx];
                        a += s.weights[(dy * p + dx) * c_n + c] * v;
                    }
                }
                dst[(c * gh + y) * gw + x] = a.max(0.0);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod wide {
    use super::{FrameWindow, Scratch, Stem};

    // (std caches what the CPU has: each check is a load and a test.)
    pub fn has_avx512() -> bool {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
    }

    pub fn has_avx2_fma() -> bool {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }

    /// A path compiled for CPU `features`; the caller checks the CPU has them.
    macro_rules! path {
        ($name:ident, $features:literal, $zmm:literal) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(s: &Stem, at: FrameWindow, scratch: &mut Scratch, dst: &mut [f32]) {
                super::run_generic::<true, $zmm>(s, at, scratch, dst)
            }
        };
    }

    path!(run_avx512, "avx512f,avx2,fma", true);
    path!(run_avx2, "avx2,fma", false);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stem of `channels` outputs over `patch` x `patch` patches with weights and
    /// biases from a fixed sequence.
    fn stem(channels: usize, patch: usize) -> Stem {
        let k = patch * patch;
        let mut seed = 7u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        Stem {
            channels,
            patch,
            weights: (0..k * channels).map(|_| next() * 0.05).collect(),
            bias: (0..channels).map(|_| next() * 4.0).collect(),
        }
    }

    type Kernel<'a> = dyn Fn(&mut Scratch, &mut [f32]) + 'a;

    /// The stem by its definition: each output pixel read from the padded frame.
    fn by_definition(
        s: &Stem,
        px: &[u8],
        (w, h): (usize, usize),
        (ox, oy): (usize, usize),
        (pw, ph): (usize, usize),
    ) -> Vec<f32> {
        let p = s.patch;
        let (gw, gh) = (pw / p, ph / p);
        let mut out = vec![0.0; s.channels * gw * gh];
        for c in 0..s.channels {
            for y in 0..gh {
                for x in 0..gw {
                    let mut a = s.bias[c] as f64;
                    for dy in 0..p {
                        for dx in 0..p {
                            let fx = (ox + x * p + dx).min(w - 1);
                            let fy = (oy + y * p + dy).min(h - 1);
                            let wv = s.weights[(dy * p + dx) * s.channels + c] as f64;
                            a += wv * px[fy * w + fx] as f64;
                        }
                    }
                    out[(c * gh + y) * gw + x] = a.max(0.0) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn every_channel_count_and_window_matches_the_definition() {
        let (w, h) = (45, 29);
        let px: Vec<u8> = (0..w * h)
            .map(|i| ((i * 37 + i / w * 11) % 256) as u8)
            .collect();
        let mut rows = Scratch::default();
        for (channels, patch) in [(16, 8), (32, 8), (64, 8), (5, 8), (16, 4), (3, 2)] {
            let s = stem(channels, patch);
            // Inside the frame, across its right and bottom edges, wholly in the padding,
            // and past the frame's last column and row (one repeated pixel: no spread of
            // values to check the ReLU on).
            for (origin, size, spread) in [
                ((0, 0), (5 * patch, 3 * patch), true),
                ((8, 8), (6 * patch, 4 * patch), true),
                ((40, 24), (2 * patch, 2 * patch), true),
                ((0, 0), (48 + 2 * patch, 32 + patch), true),
                ((48, 32), (2 * patch, 2 * patch), false),
            ] {
                let want = by_definition(&s, &px, (w, h), origin, size);
                let at = FrameWindow {
                    pixels: &px,
                    frame: (w, h),
                    origin,
                    size,
                };
                // The path this CPU takes, then each other path it can take.
                let mut paths: Vec<(&str, Box<Kernel>)> = vec![
                    ("dispatched", Box::new(|r, d| s.run(at, r, d))),
                    (
                        "generic",
                        Box::new(|r, d| run_generic::<false, false>(&s, at, r, d)),
                    ),
                ];
                #[cfg(target_arch = "x86_64")]
                {
                    if wide::has_avx2_fma() {
                        paths.push((
                            "avx2",
                            // SAFETY: checked just above.
                            Box::new(|r, d| unsafe { wide::run_avx2(&s, at, r, d) }),
                        ));
                    }
                    if wide::has_avx512() {
                        paths.push((
                            "avx512",
                            // SAFETY: checked just above.
                            Box::new(|r, d| unsafe { wide::run_avx512(&s, at, r, d) }),
                        ));
                    }
                }
                for (name, run) in &paths {
                    let mut got = vec![f32::NAN; want.len()];
                    run(&mut rows, &mut got);
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(g, w)| (g - w).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        worst < 1e-3,
                        "{name}: {channels} channels, patch {patch}, window {origin:?} {size:?}: off by {worst}"
                    );
                }
                if spread {
                    assert!(want.contains(&0.0), "the ReLU clips something");
                    assert!(want.iter().any(|&v| v > 0.0));
                }
            }
        }
    }

    #[test]
    fn the_shipped_nets_have_a_stem_and_a_plain_net_has_none() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (file, channels) in [("models/neu_look.onnx", 16), ("models/neu_det.onnx", 64)] {
            let proto = tract_onnx::onnx()
                .proto_model_for_path(repo.join(file))
                .unwrap();
            let cut = Stem::find(&proto, 8, 1.0, 0.0).unwrap_or_else(|| panic!("{file}"));
            assert_eq!(cut.stem.channels(), channels, "{file}");
            assert!(cut.relu.ends_with("Relu"), "{file}: {}", cut.relu);
            // Another patch size does not match the weights.
            assert!(Stem::find(&proto, 4, 1.0, 0.0).is_none(), "{file}");
        }
        // The input's normalisation is folded into the weights and biases.
        let proto = tract_onnx::onnx()
            .proto_model_for_path(repo.join("models/neu_det.onnx"))
            .unwrap();
        let plain = Stem::find(&proto, 8, 1.0, 0.0).unwrap().stem;
        let scaled = Stem::find(&proto, 8, 0.5, -3.0).unwrap().stem;
        for (a, b) in scaled.weights.iter().zip(&plain.weights) {
            assert!((a - b * 0.5).abs() < 1e-6);
        }
        for c in 0..64 {
            let sum: f32 = (0..64).map(|i| plain.weights[i * 64 + c]).sum();
            assert!((scaled.bias[c] - (plain.bias[c] - 3.0 * sum)).abs() < 1e-4);
        }
        // A net that begins otherwise runs whole in tract.
        let proto = tract_onnx::onnx()
            .proto_model_for_path(repo.join("models/neu_look.onnx"))
            .unwrap();
        // Each change of the graph below leaves it without a stem inspectd can take.
        let refused = |what: &str, change: &dyn Fn(&mut pb::GraphProto, usize)| {
            let mut other = proto.clone();
            let g = other.graph.as_mut().unwrap();
            let input = g.input[0].name.clone();
            let first = g
                .node
                .iter()
                .position(|n| n.input.contains(&input))
                .unwrap();
            change(g, first);
            assert!(Stem::find(&other, 8, 1.0, 0.0).is_none(), "{what}");
        };
        let set = |name: &'static str| {
            move |g: &mut pb::GraphProto, i: usize| {
                for a in &mut g.node[i].attribute {
                    if a.name == name {
                        a.ints = vec![2, 2];
                    }
                }
            }
        };
        refused("a 2x2 first convolution", &set("kernel_shape"));
        refused("a strided first convolution", &set("strides"));
        // The convolution's output read before the ReLU too: the rest would need it.
        refused("a second reader of the conv", &|g, i| {
            let mut extra = g.node[i + 1].clone();
            extra.name = "tap".into();
            extra.output = vec!["tapped".into()];
            extra.input = vec![g.node[i].output[0].clone()];
            g.node.push(extra);
        });
        refused("the ReLU's output is a graph output", &|g, i| {
            let mut out = g.output[0].clone();
            out.name = g.node[i + 1].output[0].clone();
            g.output.push(out);
        });
    }
}
