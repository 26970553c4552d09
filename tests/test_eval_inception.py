"""The FID InceptionV3 (`bigvar.eval.inception`) and its two weight routes
(`bigvar.convert.inception`), against the real tools on random weights:

- pytorch-fid 0.3.0 and torch-fidelity 0.4.0 on the same seeded weights
  (fixtures/eval/pt_inception.pth, inception.npz; made by fixtures/make_inception_fixtures.py):
  pool, spatial (`mixed_6/conv`) and logits features for images at 256 and 512 px, each route with
  its own preprocessing (pytorch-fid: torch's bilinear resize; torch-fidelity: TF1's, as the ADM
  graph);
- TensorFlow's `ResizeBilinear` (fixtures/eval/tf1_resize.npz) and a GraphDef built by TensorFlow
  with the ADM graph's node names and op types (adm_graph_small.pb/.npz; both made by
  fixtures/make_adm_fixtures.py);
- the GraphDef route against the .pth route: the same weights directory.
"""
import os

import jax
import numpy as np
import pytest

from bigvar import parallel, weights
from bigvar.convert import inception as convert_inception
from bigvar.convert.common import ConversionError
from bigvar.eval import inception
from bigvar.nn import resize

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
PTH = os.path.join(FIXTURES, "pt_inception.pth")


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(FIXTURES, "inception.npz")) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def variables():
    return convert_inception.read_pth(PTH)


def relative_error(got, want):
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("preprocessing, tool", [("pytorch-fid", "pytorch_fid"),
                                                 ("adm", "torch_fidelity")])
def test_features_equal_the_reference_tools(variables, golden, preprocessing, tool):
    extractor = inception.FeatureExtractor(variables, preprocessing, batch_size=8)
    bias = np.asarray(variables["params"]["fc"]["bias"])
    for size in (256, 512):
        out = extractor(golden[f"images_{size}"])
        logits = out["logits"] + bias if tool == "pytorch_fid" else out["logits"]
        want_logits = golden[f"{tool}/logits_{size}" if tool == "pytorch_fid"
                             else f"{tool}/logits_unbiased_{size}"]
        # float32 on both sides: the tools' own float32 error is up to 3e-4 (vs float64).
        assert relative_error(out["pool"], golden[f"{tool}/pool_{size}"]) < 1e-4
        assert relative_error(out["spatial"], golden[f"{tool}/spatial_{size}"]) < 1e-4
        assert relative_error(logits, want_logits) < 1e-4
    if tool == "torch_fidelity":  # its full logits add the bias
        np.testing.assert_allclose(golden[f"{tool}/logits_256"],
                                   golden[f"{tool}/logits_unbiased_256"] + bias, rtol=1e-5, atol=1e-4)


def test_the_two_preprocessings_differ(golden):
    """Each route must be compared with its own tool: TF1's resize has no half-pixel centres."""
    x = golden["images_256"][:1]
    adm = np.asarray(inception.preprocess(x, "adm"))
    torch = np.asarray(inception.preprocess(x, "pytorch-fid"))
    assert np.abs(adm - torch).max() > 0.05
    with pytest.raises(ValueError, match="unknown Inception preprocessing"):
        inception.preprocess(x, "tf2")


@pytest.mark.parametrize("mode, key", [("bilinear_tf1", "resize_tf1/out_{s}"),
                                       ("bilinear_float32", "resize_torch/out_{s}")])
def test_resize_matrices_equal_tf1_and_torch(golden, mode, key):
    for s in (256, 512):
        x = golden[f"resize_tf1/in_{s}"].astype(np.float32)
        got = np.asarray(resize.resize_nhwc(x, 299, mode))
        assert np.abs(got - golden[key.format(s=s)]).max() / 255 < (1e-6 if mode == "bilinear_tf1" else 1e-5)
    small = golden["resize_small/in"].astype(np.float32)
    want = golden["resize_small/out_tf1" if mode == "bilinear_tf1" else "resize_small/out_torch"]
    assert np.abs(np.asarray(resize.resize_nhwc(small, 299, mode)) - want).max() / 255 < 1e-6


def test_tf1_resize_bilinear_of_tensorflow():
    """TensorFlow's own `ResizeBilinear` (align_corners=False, half_pixel_centers=False) of
    integer-valued float images, up- and downscaling, within 1e-6 relative."""
    with np.load(os.path.join(FIXTURES, "tf1_resize.npz")) as f:
        for k in "abcd":
            x, want = f[f"in_{k}"], f[f"out_{k}"]
            got = np.asarray(resize.resize_nhwc(x.astype(np.float32), 299, "bilinear_tf1"))
            assert np.abs(got - want).max() / np.abs(want).max() < 1e-6, k


def test_graphdef_reader_on_a_tensorflow_graph():
    """A GraphDef written by TensorFlow with the ADM graph's node names and op types (real shapes
    up to `mixed/tower/conv`): every constant read bit for bit, the attributes as TF stores them,
    and our layers on those weights give TensorFlow's outputs, from the in-graph resize through
    conv, conv_1, conv_2, pool and conv_3 (batch norm without gamma where
    `scale_after_normalization` is False, as TF; conv_3 has it set)."""
    import flax.linen as nn
    consts, nodes = convert_inception.read_graph(os.path.join(FIXTURES, "adm_graph_small.pb"))
    with np.load(os.path.join(FIXTURES, "adm_graph_small.npz")) as f:
        want = {k: f[k] for k in f.files}
    numeric = [k for k in consts if k in want]
    assert len(numeric) >= 38 and "DecodeJpeg/contents" not in consts  # the JPEG string is skipped
    for name in numeric:
        np.testing.assert_array_equal(consts[name], want[name], err_msg=name)
    for key in (k for k in want if k.startswith("attr/") and k.endswith(
            ("variance_epsilon", "scale_after_normalization", "align_corners", "half_pixel_centers"))):
        node, attr = key[len("attr/"):].rsplit("/", 1)
        assert nodes[node][1][attr] == pytest.approx(want[key].item()), key
    assert nodes["conv/batchnorm"][0] == "BatchNormWithGlobalNormalization"

    def crop(x):
        return np.asarray(x)[:, :16, :16, :]

    def layer(scope, x, **conv_args):
        params = convert_inception.graph_layer(consts, nodes, scope)
        features = params["conv"]["kernel"].shape[-1]
        return inception.BasicConv2d(features, params["conv"]["kernel"].shape[:2], **conv_args).apply(
            {"params": params}, x)

    x = inception.preprocess(want["input"].astype(np.uint8), "adm")  # ResizeBilinear, Sub, Mul
    np.testing.assert_allclose(crop(x), want["out/Mul"], rtol=0, atol=1e-6)
    x = layer("conv", x, stride=2)
    np.testing.assert_allclose(crop(x), want["out/conv"], rtol=1e-5, atol=1e-5)
    x = layer("conv_2", layer("conv_1", x), padding=(1, 1))
    np.testing.assert_allclose(crop(x), want["out/conv_2"], rtol=1e-5, atol=1e-5)
    x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
    x = layer("conv_3", x)
    np.testing.assert_allclose(crop(x), want["out/conv_3"], rtol=1e-5, atol=1e-5)
    assert float(np.asarray(x, np.float64).sum()) == pytest.approx(float(want["outsum/conv_3"]), rel=1e-5)


# ---- the GraphDef route --------------------------------------------------------------------
def write_graph(path, params, scale_after_normalization=True, epsilon=1e-3, drop=()):
    """A GraphDef holding `params` the way the ADM graph stores them (Const nodes named by TF
    scope, BatchNormWithGlobalNormalization nodes), written with the protobuf classes."""
    from tensorboardX.proto import graph_pb2
    graph = graph_pb2.GraphDef()

    def const(name, value):
        if name in drop:
            return
        node = graph.node.add(name=name, op="Const")
        tensor = node.attr["value"].tensor
        tensor.dtype = 1  # DT_FLOAT
        for d in value.shape:
            tensor.tensor_shape.dim.add(size=d)
        tensor.tensor_content = np.ascontiguousarray(value, "<f4").tobytes()

    p = params["params"]
    for module, scope in convert_inception.tf_scopes().items():
        layer = p
        for part in module.split("."):
            layer = layer[part]
        const(f"{scope}/conv2d_params", np.asarray(layer["conv"]["kernel"]))
        bn = graph.node.add(name=f"{scope}/batchnorm", op="BatchNormWithGlobalNormalization")
        bn.attr["variance_epsilon"].f = epsilon
        bn.attr["scale_after_normalization"].b = scale_after_normalization
        for tf_name, ours in (("gamma", "scale"), ("beta", "bias"), ("moving_mean", "running_mean"),
                              ("moving_variance", "running_var")):
            const(f"{scope}/batchnorm/{tf_name}", np.asarray(layer["bn"][ours]))
    const("softmax/weights", np.asarray(p["fc"]["kernel"]))
    const("softmax/biases", np.asarray(p["fc"]["bias"]))
    resize_node = graph.node.add(name="ResizeBilinear", op="ResizeBilinear")
    resize_node.attr["align_corners"].b = False
    with open(path, "wb") as f:
        f.write(graph.SerializeToString())


def test_both_routes_give_the_same_weights_directory(variables, tmp_path):
    graph = str(tmp_path / "classify_image_graph_def.pb")
    write_graph(graph, variables)
    config_pth, from_pth = convert_inception.convert(pth=PTH)
    config_graph, from_graph = convert_inception.convert(graph=graph)
    flat = lambda v: dict(jax.tree_util.tree_flatten_with_path(v)[0])  # noqa: E731
    a, b = flat(from_pth), flat(from_graph)
    assert a.keys() == b.keys() and len(a) == 472
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    assert config_pth["inception"] == config_graph["inception"]
    # … and through the CLI, the weights directories load the same.
    from bigvar.convert.__main__ import main
    assert main(["inception", f"--pth={PTH}", f"--out={tmp_path / 'a'}"]) == 0
    assert main(["inception", f"--graph={graph}", f"--out={tmp_path / 'b'}"]) == 0
    loaded_a = inception.load_inception(str(tmp_path / "a"))
    loaded_b = inception.load_inception(str(tmp_path / "b"))
    for x, y in zip(jax.tree_util.tree_leaves(loaded_a), jax.tree_util.tree_leaves(loaded_b)):
        np.testing.assert_array_equal(x, y)


def test_graph_batch_norm_semantics_and_errors(variables, tmp_path):
    path = str(tmp_path / "g.pb")
    write_graph(path, variables, scale_after_normalization=False)
    _, params = convert_inception.convert(graph=path)  # TF ignores gamma then: scale = 1
    np.testing.assert_array_equal(params["params"]["Mixed_6d"]["branch1x1"]["bn"]["scale"], 1.0)
    write_graph(path, variables, epsilon=1e-5)
    with pytest.raises(ConversionError, match="variance_epsilon 1e-05"):
        convert_inception.convert(graph=path)
    write_graph(path, variables, drop=("mixed_6/conv/batchnorm/beta",))
    with pytest.raises(ConversionError, match="no constant 'mixed_6/conv/batchnorm/beta'"):
        convert_inception.convert(graph=path)
    with open(path, "wb") as f:
        f.write(b"\x00not a graph")
    with pytest.raises(ConversionError, match="not a TensorFlow GraphDef|not the Inception graph"):
        convert_inception.convert(graph=path)


def test_wrong_weights_are_clear_errors(tmp_path):
    from bigvar.convert.torch_pickle import load
    sd = dict(load(PTH))
    with pytest.raises(ConversionError, match="Mixed_7c.branch_pool.conv.weight has shape"):
        convert_inception.convert_state_dict(
            {**sd, "Mixed_7c.branch_pool.conv.weight": np.zeros((192, 2048, 3, 3), np.float32)}, "x.pth")
    with pytest.raises(ConversionError, match="AuxLogits.fc.weight"):  # torchvision's InceptionV3
        convert_inception.convert_state_dict({**sd, "AuxLogits.fc.weight": np.zeros((1000, 768))}, "tv.pth")
    with pytest.raises(ConversionError, match="not an InceptionV3 state dict"):
        convert_inception.convert_state_dict({"features.0.weight": np.zeros((64, 3, 3, 3))}, "vgg.pth")
    missing = {k: v for k, v in sd.items() if k != "fc.bias"}
    with pytest.raises(ConversionError, match="fc.bias"):
        convert_inception.convert_state_dict(missing, "x.pth")
    # A weights directory of another network is refused by name.
    weights.save_weights(str(tmp_path / "lpips"), {"x": np.zeros(1)}, {"model": "lpips"})
    with pytest.raises(ValueError, match="holds 'lpips' weights, not an FID InceptionV3"):
        inception.load_inception(str(tmp_path / "lpips"))
    with pytest.raises(FileNotFoundError, match="is not an FID InceptionV3 weights directory"):
        inception.load_inception(str(tmp_path))


def test_images_must_be_uint8_nhwc(variables):
    extractor = inception.FeatureExtractor(variables, "adm",
                                           parallel.make_mesh(devices=jax.devices()[:1]), batch_size=2)
    for bad in (np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 3, 32, 32), np.uint8),
                np.zeros((32, 32, 3), np.uint8)):
        with pytest.raises(ValueError, match="expected uint8 images of shape"):
            extractor(bad)
