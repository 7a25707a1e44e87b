"""Writes fake_yunet.onnx: a network with YuNet's interface (input "input" [1, 3, H, W] BGR 0..255; outputs cls, obj,
bbox, kps at strides 8, 16, 32, each [1, cells, 1/1/4/10]) that "detects" bright squares, so that the face_mosaic
op's detector path runs through OpenCV's own cv2.FaceDetectorYN in the tests without the real model's weights.

Only the stride-32 head responds: cls = obj = the mean brightness (0..1) of each 32 x 32 cell, bbox = the cell
itself. A bright 32 x 32 square on a 32-px grid position is therefore one face of score = its mean brightness.
Needs the `onnx` package (not a dependency of the project): `python tests/reference/make_fake_yunet.py`."""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
HEADS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}


def head(name: str, stride: int, channels: int, nodes: list, inits: list) -> None:
    # average each stride x stride cell (no weights), then a 1x1 convolution mixes the 3 colours into the head
    w = np.zeros((channels, 3, 1, 1), np.float32)
    b = np.zeros(channels, np.float32)
    if stride == 32 and name in ("cls", "obj"):
        w[:] = 1.0 / (3 * 255.0)                          # mean brightness of the cell, 0..1
    if stride == 32 and name == "bbox":
        b[:2] = 0.5                                       # centre of the cell; exp(0) * 32 = the cell's size
    key = f"{name}_{stride}"
    inits += [numpy_helper.from_array(w, f"{key}_w"), numpy_helper.from_array(b, f"{key}_b"),
              numpy_helper.from_array(np.array([1, channels, -1], np.int64), f"{key}_shape")]
    nodes += [helper.make_node("AveragePool", ["input"], [f"{key}_pool"], kernel_shape=[stride, stride],
                               strides=[stride, stride]),
              helper.make_node("Conv", [f"{key}_pool", f"{key}_w", f"{key}_b"], [f"{key}_conv"], kernel_shape=[1, 1]),
              helper.make_node("Reshape", [f"{key}_conv", f"{key}_shape"], [f"{key}_flat"]),
              helper.make_node("Transpose", [f"{key}_flat"], [key], perm=[0, 2, 1])]


def main() -> None:
    nodes, inits, outputs = [], [], []
    for name, channels in HEADS.items():
        for s in STRIDES:
            head(name, s, channels, nodes, inits)
            outputs.append(helper.make_tensor_value_info(f"{name}_{s}", TensorProto.FLOAT, [1, None, channels]))
    graph = helper.make_graph(nodes, "fake_yunet",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="qwenimage tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_yunet.onnx")
    onnx.save(model, out)
    print(f"wrote {out}: {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
