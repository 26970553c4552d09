"""InceptionV3 as the FID tools run it: the TensorFlow graph of 2015-12-05
(`classify_image_graph_def.pb`, which OpenAI's ADM evaluator imports) and its PyTorch port in
pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`, also torch-fidelity's weights).

It differs from torchvision's InceptionV3: the average pools of the A, C and first E blocks do not
count the zero padding (TF's `AvgPool` SAME), the last E block pools with a max, batch norm has
eps 1e-3, and the classifier has 1008 outputs. One forward pass gives every feature the metrics
need:

  pool     (N, 2048)  `pool_3`: the global average pool (FID, Precision/Recall)
  spatial  (N, 2023)  `mixed_6/conv` (= pytorch-fid's `Mixed_6d.branch1x1`), its first 7 channels
                      of 17×17, flattened in H, W, C order, as the ADM evaluator takes them (sFID)
  logits   (N, 1008)  pool @ W with NO bias: what the ADM evaluator feeds its softmax (IS)

Parameter names mirror pytorch-fid's state dict (`Mixed_6d/branch1x1/conv/kernel`,
`…/bn/running_var`), so `bigvar.convert.inception` is a table.

Input preprocessing, each route exactly (`preprocess`):
  "adm"          uint8 → float, TF1 `ResizeBilinear` to 299 (align_corners=False, no half-pixel
                 centres), then (x − 128) / 128: what the ADM graph does inside itself
  "pytorch-fid"  uint8 / 255, `F.interpolate(bilinear, align_corners=False)` to 299, then 2x − 1
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bigvar import multihost
from bigvar.nn import resize

INPUT_SIZE = 299
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # the ADM evaluator keeps `mixed_6/conv[..., :7]`
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS
NUM_LOGITS = 1008
PREPROCESSING = ("adm", "pytorch-fid")
BN_EPS = 1e-3


class FrozenBatchNorm(nn.Module):
    """Inference batch norm with the running statistics as parameters (nothing is trained)."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("running_mean", nn.initializers.zeros, (c,))
        var = self.param("running_var", nn.initializers.ones, (c,))
        return (x - mean) * jax.lax.rsqrt(var + BN_EPS) * scale + bias


class BasicConv2d(nn.Module):
    """conv (no bias) → batch norm → ReLU; `padding` is (pad_h, pad_w) as in torch."""
    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, (self.stride, self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                    name="conv")(x)
        return nn.relu(FrozenBatchNorm(name="bn")(x))


def _avg_pool_3x3(x):
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(64, name="branch1x1")(x)
        b5 = conv(48, name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = conv(64, name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        branch1x1 = conv(192, name="branch1x1")(x)
        b7 = conv(c7, name="branch7x7_1")(x)
        b7 = conv(c7, **row, name="branch7x7_2")(b7)
        b7 = conv(192, **col, name="branch7x7_3")(b7)
        bd = conv(c7, name="branch7x7dbl_1")(x)
        bd = conv(c7, **col, name="branch7x7dbl_2")(bd)
        bd = conv(c7, **row, name="branch7x7dbl_3")(bd)
        bd = conv(c7, **col, name="branch7x7dbl_4")(bd)
        bd = conv(192, **row, name="branch7x7dbl_5")(bd)
        bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
        # Also returns branch1x1: Mixed_6d's is the sFID feature map (`mixed_6/conv`).
        return jnp.concatenate([branch1x1, b7, bd, bp], axis=-1), branch1x1


class InceptionD(nn.Module):
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = conv(192, name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """`max_pool`: the FID graph's last block pools its fourth branch with a max, not a mean."""
    max_pool: bool = False
    precision: str = "highest"

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        b1 = conv(320, name="branch1x1")(x)
        b3 = conv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([conv(384, **row, name="branch3x3_2a")(b3),
                              conv(384, **col, name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([conv(384, **row, name="branch3x3dbl_3a")(bd),
                              conv(384, **col, name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = conv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """The FID InceptionV3 on preprocessed (N, 299, 299, 3) inputs in [-1, 1]; returns a dict of
    `pool`, `spatial` and `logits` (see the module docstring)."""
    precision: str = "highest"  # TPUs and GPUs would otherwise round the convolutions to bf16/TF32

    @nn.compact
    def __call__(self, x):
        p = self.precision
        conv = functools.partial(BasicConv2d, precision=p)
        x = conv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = conv(80, name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, precision=p, name=name)(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x, branch1x1 = InceptionC(c7, precision=p, name=name)(x)
            if name == "Mixed_6d":
                spatial = branch1x1[..., :SPATIAL_CHANNELS]
        x = InceptionD(precision=p, name="Mixed_7a")(x)
        x = InceptionE(precision=p, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        return {"pool": pool, "spatial": spatial.reshape(spatial.shape[0], -1),
                "logits": UnbiasedClassifier(precision=p, name="fc")(pool)}


class UnbiasedClassifier(nn.Module):
    """The 1008-way classifier. Its bias is stored (pytorch-fid's `fc.bias`, the graph's
    `softmax/biases`) but not added: the ADM evaluator's Inception Score takes the softmax of
    pool @ W alone (torch-fidelity calls these `logits_unbiased`)."""
    precision: str = "highest"

    @nn.compact
    def __call__(self, pool):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (POOL_DIM, NUM_LOGITS))
        self.param("bias", nn.initializers.zeros, (NUM_LOGITS,))
        return jnp.dot(pool, kernel, precision=self.precision)


# ---- preprocessing and the feature pass -------------------------------------------------------
def preprocess(images: jax.Array, preprocessing: str = "adm") -> jax.Array:
    """uint8 (N, H, W, 3) images → the network's (N, 299, 299, 3) float32 input, exactly as the
    ADM graph ("adm") or pytorch-fid ("pytorch-fid") prepares it (see the module docstring)."""
    x = images.astype(jnp.float32)
    if preprocessing == "adm":
        x = resize.resize_nhwc(x, INPUT_SIZE, "bilinear_tf1")
        return (x - 128.0) * (1.0 / 128.0)  # the graph's Sub and Mul nodes; 1/128 is exact
    if preprocessing == "pytorch-fid":
        x = resize.resize_nhwc(x / 255.0, INPUT_SIZE, "bilinear_float32")
        return 2.0 * x - 1.0
    raise ValueError(f"unknown Inception preprocessing {preprocessing!r}; expected one of "
                     f"{PREPROCESSING}")


def check_images(images, what: str) -> None:
    """Images for the Inception pass must be uint8 (N, H, W, 3), as the ADM evaluator's arr_0."""
    shape, dtype = getattr(images, "shape", None), getattr(images, "dtype", None)
    if dtype != np.uint8 or shape is None or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(
            f"{what}: expected uint8 images of shape (N, H, W, 3) (ADM's arr_0 layout), got "
            f"{dtype} {shape}. Convert with np.clip(np.round(x), 0, 255).astype(np.uint8), and "
            "move channels last (x.transpose(0, 2, 3, 1)) if they come first.")


@functools.lru_cache(maxsize=1)
def param_shapes() -> dict:
    """{"params": …} of ShapeDtypeStructs of `InceptionV3`."""
    x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    return jax.eval_shape(InceptionV3().init, jax.random.key(0), x)


def load_inception(weights_dir: str) -> dict:
    """{"params": …} from a directory written by `python -m bigvar.convert inception`."""
    from bigvar import weights
    how = ("Make one with `python -m bigvar.convert inception --pth=pt_inception-2015-12-05-6726825d.pth "
           f"--out={weights_dir}` (or --graph=classify_image_graph_def.pb) and pass it as "
           "--config.eval.inception")
    weights.require_model(weights_dir, "inception", "an FID InceptionV3", how)
    return weights.load_weights(weights_dir, param_shapes())


class FeatureExtractor:
    """The Inception pass, data-parallel over every device of `mesh`: each device preprocesses and
    runs its shard of the batch (`shard_map`); one compile per input resolution.

    `extractor(images)` → {"pool", "spatial", "logits"} as float32 NumPy arrays.
    """

    def __init__(self, variables: dict, preprocessing: str = "adm", mesh=None,
                 batch_size: int = 64, precision: str = "highest"):
        from bigvar import parallel
        if preprocessing not in PREPROCESSING:
            raise ValueError(f"eval.preprocessing={preprocessing!r}; expected one of {PREPROCESSING}")
        self.mesh = mesh if mesh is not None else parallel.make_mesh()
        shards = parallel.data_parallel_size(self.mesh)
        self.batch_size = -(-batch_size // shards) * shards  # a multiple of the device count
        self.preprocessing = preprocessing
        self.params = jax.device_put(variables, parallel.replicated(self.mesh))
        model = InceptionV3(precision=precision)
        spec = parallel.batch_spec()

        def per_device(params, images):
            return model.apply(params, preprocess(images, preprocessing))

        self._run = jax.jit(jax.shard_map(
            per_device, mesh=self.mesh, in_specs=(jax.sharding.PartitionSpec(), spec),
            out_specs=spec, check_vma=False))
        self._sharding = parallel.batch_sharding(self.mesh)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        check_images(images, "the Inception input")
        n, outs = len(images), []
        for start in range(0, n, self.batch_size):
            chunk = np.asarray(images[start:start + self.batch_size])
            padded = np.concatenate([chunk, np.zeros((self.batch_size - len(chunk),) + chunk.shape[1:],
                                                     np.uint8)]) if len(chunk) < self.batch_size else chunk
            out = self._run(self.params, jax.device_put(padded, self._sharding))
            outs.append({k: multihost.to_host(v)[:len(chunk)] for k, v in out.items()})
        if not outs:
            return {"pool": np.zeros((0, POOL_DIM), np.float32),
                    "spatial": np.zeros((0, SPATIAL_DIM), np.float32),
                    "logits": np.zeros((0, NUM_LOGITS), np.float32)}
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
