"""FID InceptionV3 weights → bigvar params (`bigvar.eval.inception.InceptionV3`), two routes to
the same weights directory, neither needing torch or TensorFlow:

* `--pth`: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (torch-fidelity ships the same
  file as `weights-inception-2015-12-05-6726825d.pth`): keys `Conv2d_1a_3x3.conv.weight`,
  `….bn.{weight,bias,running_mean,running_var}`, …, `fc.{weight,bias}`; read by the safe reader.
* `--graph`: the ADM evaluator's `classify_image_graph_def.pb` (TensorFlow's Inception of
  2015-12-05), a GraphDef parsed with the protobuf classes tensorboardX ships. Its weights are
  `Const` nodes: `<scope>/conv2d_params` (kh, kw, in, out) and
  `<scope>/batchnorm/{gamma,beta,moving_mean,moving_variance}` per convolution, and
  `softmax/{weights,biases}`. The scopes follow TF's naming (`conv`, `conv_1`, …, `mixed`,
  `mixed_1`, …, `mixed_10`; inside a block `conv`, `tower/conv_1`, `tower_1/mixed/conv`, …); the
  table below maps each to pytorch-fid's module. Each batch norm's `variance_epsilon` must be
  1e-3 and its gamma is used only where `scale_after_normalization` is set, as TF does.

Both check every tensor against the model's shapes and name what is missing, unexpected or
mis-shaped.
"""
from __future__ import annotations


import jax
import numpy as np

from bigvar.convert import torch_pickle
from bigvar.convert.common import (ConversionError, check_against, conv, find_state_dict,
                                   flatten, linear, report_unknown_keys, set_path)
from bigvar.eval import inception

VARIANT = "fid-inception-2015-12-05"
_HELP = ("usage: python -m bigvar.convert inception --pth=pt_inception-2015-12-05-6726825d.pth "
         "--out=DIR, or --graph=classify_image_graph_def.pb --out=DIR")

# pytorch-fid module → TF scope, for the stem and the eleven mixed blocks.
_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
         "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_BLOCKS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
           "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
# Inside a block, by block type (pytorch-fid branch → TF sub-scope).
_A = {"branch1x1": "conv", "branch5x5_1": "tower/conv", "branch5x5_2": "tower/conv_1",
      "branch3x3dbl_1": "tower_1/conv", "branch3x3dbl_2": "tower_1/conv_1",
      "branch3x3dbl_3": "tower_1/conv_2", "branch_pool": "tower_2/conv"}
_B = {"branch3x3": "conv", "branch3x3dbl_1": "tower/conv", "branch3x3dbl_2": "tower/conv_1",
      "branch3x3dbl_3": "tower/conv_2"}
_C = {"branch1x1": "conv", "branch7x7_1": "tower/conv", "branch7x7_2": "tower/conv_1",
      "branch7x7_3": "tower/conv_2", "branch7x7dbl_1": "tower_1/conv",
      **{f"branch7x7dbl_{k + 1}": f"tower_1/conv_{k}" for k in range(1, 5)},
      "branch_pool": "tower_2/conv"}
_D = {"branch3x3_1": "tower/conv", "branch3x3_2": "tower/conv_1", "branch7x7x3_1": "tower_1/conv",
      **{f"branch7x7x3_{k + 1}": f"tower_1/conv_{k}" for k in range(1, 4)}}
_E = {"branch1x1": "conv", "branch3x3_1": "tower/conv", "branch3x3_2a": "tower/mixed/conv",
      "branch3x3_2b": "tower/mixed/conv_1", "branch3x3dbl_1": "tower_1/conv",
      "branch3x3dbl_2": "tower_1/conv_1", "branch3x3dbl_3a": "tower_1/mixed/conv",
      "branch3x3dbl_3b": "tower_1/mixed/conv_1", "branch_pool": "tower_2/conv"}
_BLOCK_TYPES = (_A, _A, _A, _B, _C, _C, _C, _C, _D, _E, _E)


def tf_scopes() -> dict[str, str]:
    """pytorch-fid conv module (`Mixed_6d.branch1x1`) → TF scope (`mixed_6/conv`)."""
    scopes = {module: scope for module, scope in _STEM.items()}
    for i, (block, branches) in enumerate(zip(_BLOCKS, _BLOCK_TYPES)):
        prefix = "mixed" if i == 0 else f"mixed_{i}"
        scopes.update({f"{block}.{b}": f"{prefix}/{s}" for b, s in branches.items()})
    return scopes


_BN_TORCH = {"scale": "weight", "bias": "bias", "running_mean": "running_mean",
             "running_var": "running_var"}


def torch_table() -> dict[str, tuple[str, tuple[int, ...]]]:
    """pytorch-fid key → (flax path, torch shape)."""
    table = {}
    for path, leaf in flatten(inception.param_shapes()["params"]).items():
        *module, leaf_name = path.split("/")
        if leaf_name == "kernel" and module[-1] == "conv":
            kh, kw, c_in, c_out = leaf.shape
            table[".".join(module) + ".weight"] = (path, (c_out, c_in, kh, kw))
        elif module[-1] == "bn":
            table[".".join(module) + "." + _BN_TORCH[leaf_name]] = (path, leaf.shape)
        elif module == ["fc"]:
            table[f"fc.{'weight' if leaf_name == 'kernel' else 'bias'}"] = (path, leaf.shape[::-1])
        else:
            raise AssertionError(f"no torch name for {path}")
    return table


def convert_state_dict(sd: dict, what: str) -> dict:
    """pytorch-fid state dict → {"params": …}; `num_batches_tracked` counters are ignored."""
    table = torch_table()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    unknown = sorted(k for k in sd if k not in table)
    if "Conv2d_1a_3x3.conv.weight" not in sd:
        raise ConversionError(f"{what} is not an InceptionV3 state dict (no Conv2d_1a_3x3.conv.weight; "
                              f"first keys: {sorted(sd)[:8]}). {_HELP}")
    report_unknown_keys(what, unknown, "Is this torchvision's InceptionV3 (it has AuxLogits)? FID "
                        "needs pytorch-fid's pt_inception-2015-12-05-6726825d.pth.")
    params: dict = {}
    for key, (path, torch_shape) in table.items():
        if key not in sd:
            continue  # reported by check_against below
        value = np.asarray(sd[key], np.float32)
        if tuple(value.shape) != torch_shape:
            raise ConversionError(f"{what}: {key} has shape {tuple(value.shape)}, the FID "
                                  f"InceptionV3 needs {torch_shape}")
        if path.endswith("conv/kernel"):
            value = conv(value)
        elif path == "fc/kernel":
            value = linear(value)
        set_path(params, path, value)
    check_against(inception.param_shapes()["params"], params, f"{what}: the InceptionV3 weights",
                  display=lambda p: next((k for k, (fp, _) in table.items() if fp == p), p))
    return {"params": params}


def read_pth(path: str) -> dict:
    sd = find_state_dict(torch_pickle.load(path), [("state_dict",), ("model",)], path)
    return convert_state_dict(sd, path)


# ---- the TensorFlow GraphDef ------------------------------------------------------------------
_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16}


def tensor_to_numpy(tensor) -> np.ndarray:
    """A TensorProto's value (what TF's `tensor_util.MakeNdarray` returns, for numeric dtypes)."""
    dtype = _TF_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ConversionError(f"unsupported TensorProto dtype {tensor.dtype}")
    shape = tuple(d.size for d in tensor.tensor_shape.dim)
    if tensor.tensor_content:
        return np.frombuffer(tensor.tensor_content, np.dtype(dtype).newbyteorder("<")) \
            .astype(dtype).reshape(shape)
    values = {np.float32: tensor.float_val, np.float64: tensor.double_val,
              np.int32: tensor.int_val, np.int64: tensor.int64_val}.get(dtype)
    if dtype == np.float16:  # half_val holds the raw 16-bit patterns in int32s
        values = np.asarray(tensor.half_val, np.uint16).view(np.float16)
    values = np.asarray(values, dtype)
    size = int(np.prod(shape))
    if values.size == size:
        return values.reshape(shape)
    if values.size >= 1:  # TF repeats the last value to fill the shape
        return np.concatenate([values, np.full(size - values.size, values[-1], dtype)]).reshape(shape)
    return np.zeros(shape, dtype)


def read_graph(path: str) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, dict]]]:
    """(Const node name → array, node name → (op, attrs as plain values)) of a GraphDef file."""
    from tensorboardX.proto import graph_pb2  # the GraphDef messages, without TensorFlow
    graph = graph_pb2.GraphDef()
    with open(path, "rb") as f:
        data = f.read()
    try:
        graph.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError
        raise ConversionError(f"{path} is not a TensorFlow GraphDef ({e}). {_HELP}") from None
    consts, nodes = {}, {}
    for node in graph.node:
        attrs = {}
        for key, value in node.attr.items():
            kind = value.WhichOneof("value")
            if kind in ("f", "i", "b", "s"):
                attrs[key] = getattr(value, kind)
            elif kind == "tensor" and node.op != "Const" and value.tensor.dtype in _TF_DTYPES:
                attrs[key] = tensor_to_numpy(value.tensor)
        nodes[node.name] = (node.op, attrs)
        if node.op == "Const" and node.attr["value"].tensor.dtype in _TF_DTYPES:
            consts[node.name] = tensor_to_numpy(node.attr["value"].tensor)  # (not the JPEG string)
    return consts, nodes


def graph_layer(consts: dict, nodes: dict, scope: str, what: str = "the graph") -> dict:
    """One conv layer of the graph as bigvar params, {"conv": {kernel}, "bn": {…}}, with TF's
    batch-norm semantics: gamma only where `scale_after_normalization` is set."""
    def take(name):
        if name not in consts:
            raise ConversionError(f"{what}: the graph has no constant {name!r}; is this the "
                                  "Inception graph of 2015-12-05?")
        return np.asarray(consts[name], np.float32)

    bn = f"{scope}/batchnorm"
    op, attrs = nodes.get(bn, ("", {}))
    if op and op != "BatchNormWithGlobalNormalization":
        raise ConversionError(f"{what}: {bn} is a {op}, expected BatchNormWithGlobalNormalization")
    eps = attrs.get("variance_epsilon", inception.BN_EPS)
    if not np.isclose(eps, inception.BN_EPS, rtol=1e-6):
        raise ConversionError(f"{what}: {bn} has variance_epsilon {eps:.3g}, the FID InceptionV3 "
                              f"uses {inception.BN_EPS}")
    gamma = take(f"{bn}/gamma")
    if not attrs.get("scale_after_normalization", True):
        gamma = np.ones_like(gamma)  # TF ignores gamma then
    return {"conv": {"kernel": take(f"{scope}/conv2d_params")},
            "bn": {"scale": gamma, "bias": take(f"{bn}/beta"),
                   "running_mean": take(f"{bn}/moving_mean"),
                   "running_var": take(f"{bn}/moving_variance")}}


def convert_graph(consts: dict, nodes: dict, what: str) -> dict:
    """The ADM Inception graph's constants → {"params": …} (pytorch-fid names, via tf_scopes)."""
    if "conv/conv2d_params" not in consts:
        raise ConversionError(f"{what} holds no `conv/conv2d_params`: it is not the Inception "
                              f"graph of 2015-12-05 (classify_image_graph_def.pb). {_HELP}")
    sd = {}
    for module, scope in tf_scopes().items():
        layer = graph_layer(consts, nodes, scope, what)
        sd[f"{module}.conv.weight"] = layer["conv"]["kernel"].transpose(3, 2, 0, 1)
        for ours, theirs in _BN_TORCH.items():
            sd[f"{module}.bn.{theirs}"] = layer["bn"][ours]
    for name in ("softmax/weights", "softmax/biases"):
        if name not in consts:
            raise ConversionError(f"{what}: the graph has no constant {name!r}")
    sd["fc.weight"] = np.asarray(consts["softmax/weights"], np.float32).T
    sd["fc.bias"] = np.asarray(consts["softmax/biases"], np.float32)
    resize = nodes.get("ResizeBilinear")
    if resize is not None and resize[1].get("align_corners", False):
        raise ConversionError(f"{what}: its ResizeBilinear has align_corners=True; the ADM graph's "
                              "does not, and bigvar's 'adm' preprocessing reproduces that one")
    return convert_state_dict(sd, what)


def read_graph_file(path: str) -> dict:
    consts, nodes = read_graph(path)
    return convert_graph(consts, nodes, path)


def convert(pth: str | None = None, graph: str | None = None) -> tuple[dict, dict]:
    """Reads one of the two files → (model config for config.json, {"params": …})."""
    if (pth is None) == (graph is None):
        raise ConversionError(f"pass exactly one of --pth and --graph. {_HELP}")
    variables = read_pth(pth) if pth is not None else read_graph_file(graph)
    config = {"model": "inception", "inception": {"variant": VARIANT},
              "source": {"pth": pth} if pth is not None else {"graph": graph}}
    return config, variables
