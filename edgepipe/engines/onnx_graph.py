"""Exact rewrites of an exported ED graph that ONNX Runtime's CPU provider runs faster (issue 13 item 2).

Each keeps the model's function; measured in bench/ed_speed.py and docs/benchmarks.md.

- `pixel_shuffle_as_conv_transpose`: a 1x1 Conv followed by DepthToSpace (PyTorch's conv + pixel-shuffle, CRD
  mode) is one ConvTranspose with kernel = stride = the block size. ORT's DepthToSpace is a slow strided copy
  (at 720p the ED's two took more time than any of its convolutions); ConvTranspose writes the same pixels from
  its GEMM. The conv's bias differs per sub-pixel position, which a ConvTranspose bias (one per output channel)
  cannot hold, so it rides on an extra input channel of ones (one Pad): out = W'^T [x; 1]. Same sums, same pixels.
- `depth_to_space_as_conv_transpose`: a DepthToSpace that no 1x1 Conv feeds (`ours-fast` predicts each 2x2
  block of its residual with a 3x3 conv) is a ConvTranspose with kernel = stride = the block size and 0/1
  weights, each output pixel one input value times one: the same pixels. At 720p ORT ran it in 2.2 ms against
  7.2 for its DepthToSpace (the largest single node of `ours-fast`).
- `without_crops`: the ED crops each upsampled map back to its encoder level's size (Slice ops fed by Shape),
  which for sizes divisible by the total stride (`alignment`) are whole-tensor copies. The graph without them is
  the same function on such sizes only; the engine runs it for those and the full graph otherwise.

onnx is imported by the caller (the engine); this module needs only its helpers and numpy.
"""
from __future__ import annotations

import numpy as np


def _consts(model) -> dict[str, np.ndarray]:
    """Every constant tensor of the graph by name: initializers and Constant nodes' values."""
    from onnx import numpy_helper

    found = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _consumers(model) -> dict[str, list]:
    uses: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            uses.setdefault(name, []).append(node)
    return uses


def prune(model) -> None:
    """Drop nodes (and initializers) whose outputs nothing uses any more."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(list(model.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del model.graph.node[:]
    model.graph.node.extend(reversed(keep))
    live = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)


def alignment(model) -> int:
    """The total stride of the ED: the product of its upsampling factors, DepthToSpace block sizes,
    ConvTranspose strides and constant Resize scales (1 for a graph without any).

    Input sizes divisible by it pass through every level without padding, so the crops are whole-tensor. (The
    context branch's x4 Resize sits beside the trunk's two x2 levels: 2 x 2 x 4 = 16 is its depth, 1/16.)"""
    consts = _consts(model)
    factor = 1
    for node in model.graph.node:
        if node.op_type == "DepthToSpace":
            factor *= int(_attrs(node).get("blocksize", 1))
        elif node.op_type == "ConvTranspose":
            factor *= int(max(_attrs(node).get("strides", [1]), default=1))
        elif node.op_type == "Resize":
            scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            factor *= max(1, int(round(float(np.max(scales))))) if scales is not None and scales.size else 1
    return factor


def pixel_shuffle_as_conv_transpose(model) -> int:
    """Rewrite each 1x1 Conv -> DepthToSpace(CRD) pair in place as ConvTranspose; returns how many."""
    from onnx import helper, numpy_helper

    consts, uses = _consts(model), _consumers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    graph_outputs = {o.name for o in model.graph.output}
    done, replace = 0, {}
    for d2s in model.graph.node:
        if d2s.op_type != "DepthToSpace":
            continue
        attrs = _attrs(d2s)
        mode = attrs.get("mode", b"DCR")
        r = int(attrs.get("blocksize", 0))
        conv = producer.get(d2s.input[0])
        if (mode not in (b"CRD", "CRD") or r < 2 or conv is None or conv.op_type != "Conv"
                or len(uses.get(conv.output[0], [])) != 1 or conv.output[0] in graph_outputs):
            continue
        ca = _attrs(conv)
        w = consts.get(conv.input[1])
        b = consts.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if (w is None or w.ndim != 4 or w.shape[2:] != (1, 1) or w.shape[0] % (r * r)
                or int(ca.get("group", 1)) != 1 or any(int(v) != 1 for v in ca.get("strides", [1, 1]))
                or any(int(v) != 1 for v in ca.get("dilations", [1, 1])) or any(int(v) for v in ca.get("pads", []))
                or ca.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID")):
            continue
        c_out, c_in = w.shape[0] // (r * r), w.shape[1]
        # Conv output channel c*r*r + i*r + j lands at (c, h*r + i, w*r + j) (CRD): ConvTranspose weight [Cin, C, r, r]
        wt = w[:, :, 0, 0].reshape(c_out, r, r, c_in).transpose(3, 0, 1, 2)
        base = f"{d2s.output[0]}/convtranspose"
        x = conv.input[0]
        nodes = []
        if b is not None and np.any(b):
            # one Pad appends the channel of ones (constant 1 after the last channel): a single copy of x, no
            # shape arithmetic
            wt = np.concatenate([wt, b.reshape(1, c_out, r, r)], axis=0)
            nodes.append(helper.make_node("Pad", [x, f"{base}/pads", f"{base}/one"], [f"{base}/with_ones"],
                                          mode="constant"))
            model.graph.initializer.extend([
                numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 1, 0, 0], np.int64), f"{base}/pads"),
                numpy_helper.from_array(np.array(1.0, np.float32), f"{base}/one"),
            ])
            x = f"{base}/with_ones"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(wt, np.float32), f"{base}/W"))
        nodes.append(helper.make_node("ConvTranspose", [x, f"{base}/W"], [d2s.output[0]],
                                      kernel_shape=[r, r], strides=[r, r]))
        replace[id(d2s)] = nodes
        replace[id(conv)] = []
        done += 1
    if done:
        new = []
        for node in model.graph.node:
            new.extend(replace.get(id(node), [node]))
        del model.graph.node[:]
        model.graph.node.extend(new)
        prune(model)
    return done


def _channels(model, name: str) -> int | None:
    """The static channel count (dim 1) of the tensor `name`, from its producer's weights or shape inference."""
    from onnx import shape_inference

    consts = _consts(model)
    for node in model.graph.node:
        if name in node.output and node.op_type == "Conv" and node.input[1] in consts:
            return int(consts[node.input[1]].shape[0])
    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph onnx cannot infer: leave the node as it is
        return None
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        if info.name == name:
            dims = info.type.tensor_type.shape.dim
            return int(dims[1].dim_value) if len(dims) == 4 and dims[1].dim_value > 0 else None
    return None


def depth_to_space_as_conv_transpose(model) -> int:
    """Rewrite each DepthToSpace in place as a ConvTranspose with 0/1 weights; returns how many.

    Run it after `pixel_shuffle_as_conv_transpose`, which folds a preceding 1x1 Conv in as well."""
    from onnx import helper, numpy_helper

    done, replace = 0, {}
    nodes = list(model.graph.node)  # the wrappers stay alive, so their ids stay theirs
    for d2s in nodes:
        if d2s.op_type != "DepthToSpace":
            continue
        attrs = _attrs(d2s)
        mode, r = attrs.get("mode", b"DCR"), int(attrs.get("blocksize", 0))
        c_in = _channels(model, d2s.input[0])
        if r < 2 or c_in is None or c_in % (r * r):
            continue
        c_out = c_in // (r * r)
        w = np.zeros((c_in, c_out, r, r), np.float32)
        for c in range(c_out):
            for i in range(r):
                for j in range(r):
                    # CRD: input channel c*r*r + i*r + j; DCR: (i*r + j)*C + c; both land at (c, h*r + i, w*r + j)
                    w[c * r * r + i * r + j if mode in (b"CRD", "CRD") else (i * r + j) * c_out + c, c, i, j] = 1
        name = f"{d2s.output[0]}/depth_to_space/W"
        model.graph.initializer.append(numpy_helper.from_array(w, name))
        replace[id(d2s)] = helper.make_node("ConvTranspose", [d2s.input[0], name], [d2s.output[0]],
                                            kernel_shape=[r, r], strides=[r, r])
        done += 1
    if done:
        nodes = [replace.get(id(n), n) for n in nodes]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return done


def without_crops(model) -> int:
    """Remove in place every Slice that starts at 0 with unit steps (the ED's crops); returns how many.

    The result equals the full graph only for inputs whose H and W are divisible by `alignment`."""
    consts = _consts(model)
    rename: dict[str, str] = {}
    keep, removed = [], 0
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        inputs = [rename.get(i, i) for i in node.input]
        del node.input[:]
        node.input.extend(inputs)
        if node.op_type == "Slice" and len(inputs) >= 3 and node.output[0] not in graph_outputs:
            starts = consts.get(inputs[1])
            steps = consts.get(inputs[4]) if len(inputs) > 4 and inputs[4] else None
            if starts is not None and not np.any(starts) and (steps is None or np.all(steps == 1)):
                rename[node.output[0]] = inputs[0]
                removed += 1
                continue
        keep.append(node)
    # a crop that fed the graph output directly: keep that Slice (an output needs a producer); none in the ED
    del model.graph.node[:]
    model.graph.node.extend(keep)
    prune(model)
    return removed
