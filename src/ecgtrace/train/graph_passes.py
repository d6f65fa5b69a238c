"""Rewrites of an exported ONNX graph that compute the same outputs in less time (used by the int8 export).

- :func:`drop_shape_only_dequantize`: onnxruntime's quantizer turns an int8 tensor back into float32 for a
  Shape node that only reads its size; the Shape reads the int8 tensor instead (the same numbers).
- :func:`fold_upsampled_tail`: a U-Net's last block upsamples (nearest, 2x) and runs its 3 x 3 convolutions and
  the head at the full resolution. The same arithmetic runs on the coarse grid, one channel per output phase
  (the 2 x 2 pixels each coarse pixel becomes): the upsampled tensor is never made, and one DepthToSpace at the
  end lays the head's phases out (the same outputs to float rounding: under 1e-5 on logits up to 28).

Each pass edits ``graph`` (an ``onnx.GraphProto``) in place and says how much it changed; nothing here runs
a network: :func:`ecgtrace.train.quantize.quantize_stage2` checks the rewritten file against the one it came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # onnx is an optional dependency (ecgtrace[onnx]); only the int8 export imports this module
    from onnx import GraphProto, NodeProto

#: For the fine rows 2i (phase 0) and 2i + 1 (phase 1): which of the coarse rows i - 1, i, i + 1 (rows of the
#: matrix) each tap of a 3-tap kernel (columns) reads, after a nearest 2x upsampling (fine row r holds coarse r // 2).
UPSAMPLED_TAPS = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]],
                           [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], np.float64)


def _attributes(node: NodeProto) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _readers(graph: GraphProto) -> dict[str, list[NodeProto]]:
    out: dict[str, list[NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def prune_unused(graph: GraphProto) -> int:
    """Remove the nodes whose outputs nothing reads (repeatedly) and the initializers no node reads; returns the
    number of nodes removed."""
    outputs = {o.name for o in graph.output}
    removed = 0
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(o in read for o in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)
    read = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(tensor)
    return removed


def drop_shape_only_dequantize(graph: GraphProto) -> int:
    """Remove the DequantizeLinear nodes whose output only a Shape node reads (a U-Net's decoder asks each skip
    for its size); the Shape reads the int8 tensor, of the same shape, instead. onnxruntime's quantizer leaves
    them in and onnxruntime computes them: eight whole tensors turned back to float32 for their sizes, 7 % of
    the shipped network's time. Returns how many were removed."""
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    dead = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        users = readers.get(node.output[0], [])
        if users and all(u.op_type == "Shape" for u in users):
            for u in users:
                u.input[0] = node.input[0]
            dead.append(node)
    for node in dead:
        graph.node.remove(node)
    return len(dead)


def _plain_3x3(node: NodeProto) -> bool:
    """A float32 Conv of a 3 x 3 kernel, stride 1, padding 1, no dilation or groups (its weights stored in the graph)."""
    a = _attributes(node)
    return (node.op_type == "Conv" and len(node.input) == 3 and list(a.get("kernel_shape", [])) == [3, 3]
            and list(a.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1] and list(a.get("strides", [1, 1])) == [1, 1]
            and list(a.get("dilations", [1, 1])) == [1, 1] and a.get("group", 1) == 1)


def upsampled_conv_phases(w: np.ndarray) -> np.ndarray:
    """(co, ci, 3, 3) kernel applied after a nearest 2x upsampling -> the (4 co, ci, 3, 3) kernel on the coarse
    grid that gives output channel ``4 c + 2 py + px`` = channel ``c`` at the fine pixels of phase (py, px)."""
    co, ci = w.shape[:2]
    return np.einsum("yua,oiab,xvb->oyxiuv", UPSAMPLED_TAPS, w, UPSAMPLED_TAPS).reshape(4 * co, ci, 3, 3)


def polyphase_conv(w: np.ndarray) -> np.ndarray:
    """(co, ci, 3, 3) kernel on a fine grid -> the (4 co, 4 ci, 3, 3) kernel on the coarse grid between tensors laid
    out as phases (channel ``4 c + 2 py + px``): fine row ``2 i + py + ky - 1`` is phase ``(py + ky - 1) % 2`` of
    coarse row ``i + (py + ky - 1) // 2``. Zero padding of the fine grid is zero padding of the coarse one."""
    co, ci = w.shape[:2]
    out = np.zeros((co, 2, 2, ci, 2, 2, 3, 3))
    for py in range(2):
        for px in range(2):
            for ky in range(3):
                for kx in range(3):
                    fy, fx = py + ky - 1, px + kx - 1
                    out[:, py, px, :, fy % 2, fx % 2, fy // 2 + 1, fx // 2 + 1] += w[:, :, ky, kx]
    return out.reshape(4 * co, 4 * ci, 3, 3)


def fold_upsampled_tail(graph: GraphProto) -> int:
    """Run a nearest-2x Resize followed only by plain 3 x 3 Convs and ReLUs up to a graph output (a U-Net's last
    decoder block and head) on the coarse grid: the first Conv as :func:`upsampled_conv_phases`, the others as
    :func:`polyphase_conv`, one DepthToSpace (CRD) writing the output. Returns 1 if it folded a tail, else 0.

    Whether the Resize doubles the size exactly is decided by its input at run time; the caller compares the
    outputs before and after (they differ by float rounding only when it does)."""
    from onnx import helper, numpy_helper

    readers = _readers(graph)
    weights = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for resize in list(graph.node):
        a = _attributes(resize)
        if not (resize.op_type == "Resize" and a.get("mode") == b"nearest"
                and a.get("coordinate_transformation_mode") == b"asymmetric" and a.get("nearest_mode") == b"floor"):
            continue
        chain, tensor = [], resize.output[0]
        while tensor not in outputs:
            users = readers.get(tensor, [])
            if len(users) != 1 or users[0].op_type not in ("Conv", "Relu"):
                break
            chain.append(users[0])
            tensor = users[0].output[0]
        if (tensor not in outputs or not chain or chain[0].op_type != "Conv"
                or not all(n.op_type == "Relu" or (_plain_3x3(n) and n.input[1] in weights and n.input[2] in weights)
                           for n in chain)):
            continue
        src, new = resize.input[0], []
        for k, node in enumerate(chain):
            out = node.output[0] + "_phases"
            if node.op_type == "Relu":  # element-wise: the same on the phases
                new.append(helper.make_node("Relu", [src], [out], name=node.name))
            else:
                w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
                bias = numpy_helper.to_array(weights[node.input[2]])
                wp = upsampled_conv_phases(w) if k == 0 else polyphase_conv(w)
                names = (node.input[1] + "_phases", node.input[2] + "_phases")
                graph.initializer.extend([numpy_helper.from_array(wp.astype(np.float32), names[0]),
                                          numpy_helper.from_array(np.repeat(bias, 4).astype(np.float32), names[1])])
                new.append(helper.make_node("Conv", [src, *names], [out], name=node.name,  # the name float_nodes gave
                                            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]))
            src = out
        new.append(helper.make_node("DepthToSpace", [src], [tensor], name=chain[-1].name + "_shuffle", blocksize=2,
                                    mode="CRD"))
        at = list(graph.node).index(resize)
        for node in [resize, *chain]:
            graph.node.remove(node)
        for k, node in enumerate(new):
            graph.node.insert(at + k, node)
        prune_unused(graph)  # the Resize's size computation
        return 1
    return 0
