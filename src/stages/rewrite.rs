//! Exact rewrites of a net's graph before tract plans it: the same numbers, less work.
//!
//! Both shipped nets end with an average over a few cells of their coarsest map, read by
//! a 1 x 1 convolution alone (the first look's output; the detector's area head). An
//! average whose padding is not counted is a weighted mean with weights summing to one at
//! every cell, so it commutes with the convolution, bias included:
//! `conv(avg(x)) = avg(conv(x))`. Run in that order, the average covers the
//! convolution's few output channels instead of the map's many (the detector: 7 instead
//! of 160; the look: 1 instead of 48).

use tract_onnx::pb;
use tract_onnx::prelude::*;

/// The ONNX node's attribute `name`, if it has one.
fn attribute<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// The ONNX node's integer-list attribute `attr`, if it has one.
fn ints<'a>(node: &'a pb::NodeProto, attr: &str) -> Option<&'a [i64]> {
    attribute(node, attr).map(|a| a.ints.as_slice())
}

/// The ONNX node's integer attribute `attr`, if it has one.
pub(crate) fn int(node: &pb::NodeProto, attr: &str) -> Option<i64> {
    attribute(node, attr).map(|a| a.i)
}

/// Whether an `auto_pad` attribute is the one that means the node's explicit pads.
fn explicit_pads(auto_pad: &pb::AttributeProto) -> bool {
    auto_pad.s.is_empty() || auto_pad.s == b"NOTSET"
}

/// The nodes of `graph` that read the value `name`.
pub(crate) fn readers<'a>(graph: &'a pb::GraphProto, name: &str) -> Vec<&'a pb::NodeProto> {
    graph
        .node
        .iter()
        .filter(|n| n.input.iter().any(|i| i == name))
        .collect()
}

/// Whether `node` is an average that commutes with a per-cell linear map: stride 1,
/// padding not counted, explicit pads, no ceil mode.
fn is_plain_average(node: &pb::NodeProto) -> bool {
    node.op_type == "AveragePool"
        && int(node, "count_include_pad").unwrap_or(0) == 0
        && int(node, "ceil_mode").unwrap_or(0) == 0
        && ints(node, "strides").is_none_or(|s| s.iter().all(|&v| v == 1))
        && attribute(node, "auto_pad").is_none_or(explicit_pads)
}

/// Whether `node` is a 1 x 1 convolution over all channels: one group, stride 1, no
/// padding or dilation, no attribute beyond those, and its kernel 1 x 1 by its
/// `kernel_shape` or by its weights' shape.
pub(crate) fn is_pointwise_conv(graph: &pb::GraphProto, node: &pb::NodeProto) -> bool {
    let ones = |v: &[i64]| v.iter().all(|&x| x == 1);
    let plain = node.attribute.iter().all(|a| match a.name.as_str() {
        "kernel_shape" => a.ints.len() == 2 && ones(&a.ints),
        "strides" | "dilations" => ones(&a.ints),
        "pads" => a.ints.iter().all(|&v| v == 0),
        "group" => a.i == 1,
        "auto_pad" => explicit_pads(a),
        _ => false,
    });
    let weights_1x1 = node.input.get(1).is_some_and(|w| {
        graph
            .initializer
            .iter()
            .find(|t| &t.name == w)
            .is_some_and(|t| t.dims.len() == 4 && ones(&t.dims[2..]))
    });
    node.op_type == "Conv"
        && plain
        && (weights_1x1 || node.attribute.iter().any(|a| a.name == "kernel_shape"))
}

/// Moves every plain average read only by a 1 x 1 convolution (and not a graph output)
/// after that convolution. Returns the model and how many were moved.
pub fn conv_before_average(
    proto: &pb::ModelProto,
    model: InferenceModel,
) -> TractResult<(InferenceModel, usize)> {
    let Some(graph) = proto.graph.as_ref() else {
        return Ok((model, 0));
    };
    let mut pairs = Vec::new();
    for avg in graph.node.iter().filter(|n| is_plain_average(n)) {
        let (Some(out), false) = (avg.output.first(), avg.name.is_empty()) else {
            continue;
        };
        if graph.output.iter().any(|o| &o.name == out) {
            continue;
        }
        if let [conv] = readers(graph, out).as_slice() {
            if !conv.name.is_empty()
                && conv.input.first() == Some(out)
                && conv.input.iter().filter(|i| *i == out).count() == 1
                && is_pointwise_conv(graph, conv)
            {
                pairs.push((avg.name.clone(), conv.name.clone()));
            }
        }
    }
    if pairs.is_empty() {
        return Ok((model, 0));
    }
    let mut m = model;
    for (avg, conv) in &pairs {
        let (a, c) = (m.node_id_by_name(avg)?, m.node_id_by_name(conv)?);
        let source = m.node(a).inputs[0];
        let after: Vec<InletId> = m.node(c).outputs[0].successors.to_vec();
        m.add_edge(source, InletId::new(c, 0))?;
        m.add_edge(OutletId::new(c, 0), InletId::new(a, 0))?;
        for inlet in after {
            m.add_edge(OutletId::new(a, 0), inlet)?;
        }
        // A graph output the convolution made is now the average's.
        let mut outputs = m.output_outlets()?.to_vec();
        if let Some(o) = outputs.iter_mut().find(|o| **o == OutletId::new(c, 0)) {
            *o = OutletId::new(a, 0);
            m.select_output_outlets(&outputs)?;
        }
        // What either outlet was declared to hold no longer holds (channels moved).
        m.set_outlet_fact(OutletId::new(c, 0), InferenceFact::default())?;
        m.set_outlet_fact(OutletId::new(a, 0), InferenceFact::default())?;
    }
    Ok((m.into_compact()?, pairs.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: &str) -> (pb::ModelProto, InferenceModel) {
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_path(path).unwrap();
        let model = onnx.model_for_proto_model(&proto).unwrap();
        (proto, model)
    }

    /// The net's outputs on a fixed pseudo-random input of `[1, 64, 16, 20]` patches.
    fn outputs(model: InferenceModel) -> Vec<Tensor> {
        let shape = [1usize, 64, 16, 20];
        let plan = model
            .with_input_fact(0, f32::fact(shape).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let mut seed = 12345u32;
        let input = tract_ndarray::Array4::from_shape_fn(shape, |_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 24) as f32
        });
        plan.run(tvec!(Tensor::from(input).into()))
            .unwrap()
            .into_iter()
            .map(|t| t.into_tensor())
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (
            a.to_plain_array_view::<f32>().unwrap(),
            b.to_plain_array_view::<f32>().unwrap(),
        );
        assert_eq!(a.shape(), b.shape());
        a.iter()
            .zip(b.iter())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn the_shipped_nets_average_after_their_convolution_with_the_same_outputs() {
        for (path, tolerance) in [
            ("models/neu_look.onnx", 1e-6),
            ("models/neu_det.onnx", 1e-5),
        ] {
            let (proto, model) = load(path);
            let before = outputs(model.clone());
            let (moved, n) = conv_before_average(&proto, model).unwrap();
            assert_eq!(n, 1, "{path}: one average read by a 1x1 convolution");
            // The average now reads the convolution's output.
            let graph = proto.graph.as_ref().unwrap();
            let avg = graph
                .node
                .iter()
                .find(|n| n.op_type == "AveragePool")
                .unwrap();
            let conv = graph
                .node
                .iter()
                .find(|n| n.input.first() == avg.output.first())
                .unwrap();
            let avg = moved.node(moved.node_id_by_name(&avg.name).unwrap());
            assert_eq!(
                moved.node(avg.inputs[0].node).name,
                conv.name,
                "{path}: the average reads the convolution"
            );
            let after = outputs(moved);
            assert_eq!(before.len(), after.len());
            for (b, a) in before.iter().zip(&after) {
                let d = max_diff(b, a);
                assert!(d <= tolerance, "{path}: outputs differ by {d}");
            }
        }
    }

    /// Sets the integer attribute `attr` of `node`.
    fn set_attr(node: &mut pb::NodeProto, attr: &str, value: i64) {
        match node.attribute.iter_mut().find(|a| a.name == attr) {
            Some(a) => a.i = value,
            None => node.attribute.push(pb::AttributeProto {
                name: attr.into(),
                i: value,
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                ..Default::default()
            }),
        }
    }

    /// The index in `proto`'s graph of its average, and of the convolution reading it.
    fn average_and_reader(proto: &pb::ModelProto) -> (usize, usize) {
        let nodes = &proto.graph.as_ref().unwrap().node;
        let avg = nodes
            .iter()
            .position(|n| n.op_type == "AveragePool")
            .unwrap();
        let conv = nodes
            .iter()
            .position(|n| n.input.first() == nodes[avg].output.first())
            .unwrap();
        (avg, conv)
    }

    #[test]
    fn an_average_that_counts_its_padding_or_a_grouped_convolution_stays_where_it_is() {
        let (proto, _) = load("models/neu_look.onnx");
        let (avg, conv) = average_and_reader(&proto);
        // Counting the padding makes the bias's average smaller at the edges: not exact.
        let mut counted = proto.clone();
        set_attr(
            &mut counted.graph.as_mut().unwrap().node[avg],
            "count_include_pad",
            1,
        );
        // A convolution in two groups is not one linear map over every channel (refused
        // by its attribute alone: the file's weights are not regrouped for it).
        let mut grouped = proto.clone();
        set_attr(&mut grouped.graph.as_mut().unwrap().node[conv], "group", 2);
        // A strided average is not a mean at every cell.
        let mut strided = proto.clone();
        let node = &mut strided.graph.as_mut().unwrap().node[avg];
        node.attribute.retain(|a| a.name != "strides");
        node.attribute.push(pb::AttributeProto {
            name: "strides".into(),
            ints: vec![2, 2],
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ..Default::default()
        });
        for (what, p) in [
            ("counted", counted),
            ("grouped", grouped),
            ("strided", strided),
        ] {
            let model = tract_onnx::onnx().model_for_proto_model(&proto).unwrap();
            assert_eq!(conv_before_average(&p, model).unwrap().1, 0, "{what}");
        }
        // The unchanged file is moved (the cases above fail for their change alone).
        let model = tract_onnx::onnx().model_for_proto_model(&proto).unwrap();
        assert_eq!(conv_before_average(&proto, model).unwrap().1, 1);
    }
}
