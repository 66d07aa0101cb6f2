//! Where tract spends its time on a model: runs it `ITERS` times on a zero input of the
//! given shape (or on a frame, PNG, laid out as 8x8 patches as inspectd feeds it) and
//! prints each optimised node's median time, slowest first.
//!
//! usage: cargo run --release --example profile_model -- MODEL.onnx 1,64,128,160 [ITERS [FRAME.png]]

use std::time::Instant;

use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let shape: Vec<usize> = args[2].split(',').map(|d| d.parse().unwrap()).collect();
    let iters: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(20);
    let plan = tract_onnx::onnx()
        .model_for_path(&args[1])?
        .with_input_fact(0, f32::fact(&shape).into())?
        .into_optimized()?
        .into_runnable()?;
    let mut state = TypedSimpleState::new(&plan)?;
    let input: TValue = match args.get(4) {
        // A real frame, as inspectd feeds it: 8x8 patches as channels, raw gray levels.
        Some(png) => {
            let (w, h, px) =
                inspectd::stages::capture::load_gray(std::path::Path::new(png)).unwrap();
            let (w, h) = (w as usize, h as usize);
            let mut t = Tensor::zero::<f32>(&shape)?;
            {
                let mut v = t.try_as_plain_ram_mut().unwrap();
                let d = v.as_slice_mut::<f32>()?;
                let (gh, gw) = (shape[2], shape[3]);
                for y in 0..h.min(gh * 8) {
                    for x in 0..w.min(gw * 8) {
                        d[((y % 8) * 8 + x % 8) * gh * gw + (y / 8) * gw + x / 8] =
                            px[y * w + x] as f32;
                    }
                }
            }
            t.into()
        }
        None => Tensor::zero::<f32>(&shape)?.into(),
    };
    let n = plan.model().nodes().len();
    let mut times = vec![Vec::new(); n];
    for _ in 0..iters {
        state.run_plan_with_eval(tvec!(input.clone()), |ctx, op_state, node, inputs| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            times[node.id].push(t.elapsed().as_secs_f64() * 1e3);
            r
        })?;
    }
    let mut plain: Vec<f64> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            state.run(tvec!(input.clone())).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    plain.sort_by(f64::total_cmp);
    println!("whole run, median of {iters}: {:.2} ms", plain[iters / 2]);
    let mut rows: Vec<(f64, usize)> = times
        .iter_mut()
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .map(|(i, t)| {
            t.sort_by(f64::total_cmp);
            (t[t.len() / 2], i)
        })
        .collect();
    let total: f64 = rows.iter().map(|r| r.0).sum();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("total {total:.2} ms (sum of node medians)");
    for (ms, i) in rows {
        let node = plan.model().node(i);
        println!(
            "{ms:8.3} ms {:5.1}%  #{i} {} {} -> {:?}",
            100.0 * ms / total,
            node.name,
            node.op().name(),
            node.outputs[0].fact.shape
        );
    }
    Ok(())
}
