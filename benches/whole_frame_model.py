#!/usr/bin/env python3
"""Write the shipped detector as the Python anchor runs a fully convolutional model:
one input [1, 1, H, W] of gray levels (`pyref_pipeline.py --whole --mean 0 --std
0.00392156862745098` hands it raw levels), turned into the 8x8 patches the model takes by
one ONNX SpaceToDepth node in front. The weights are the shipped ones, untouched, so both
sides of the pipeline bench run the same network on the same frames.

usage: whole_frame_model.py MODEL.onnx OUT.onnx   (needs the onnx package)
"""
import sys

import onnx
from onnx import helper

src, dst = sys.argv[1], sys.argv[2]
m = onnx.load(src)
g = m.graph
patches = g.input[0]
patch = int(round(patches.type.tensor_type.shape.dim[1].dim_value ** 0.5)) if patches.type.tensor_type.shape.dim[1].dim_value else 8
frame = helper.make_tensor_value_info("frame", onnx.TensorProto.FLOAT, [1, 1, "height", "width"])
s2d = helper.make_node("SpaceToDepth", ["frame"], [patches.name], blocksize=patch, name="frame_to_patches")
g.node.insert(0, s2d)
g.input.remove(patches)
g.input.insert(0, frame)
onnx.checker.check_model(m)
onnx.save(m, dst)
print(dst)
