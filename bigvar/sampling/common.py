"""What the VAR and BiGR samplers share: per-sample random keys, label checks, pixel conversion,
and the `Sampler` base class (models, settings, params and batches on the mesh, compiled calls)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bigvar import multihost, parallel
from bigvar.errors import UserError


def per_sample_keys(seed: jax.Array, sample_index: jax.Array) -> jax.Array:
    """Key of each sample from (seed, global sample index) only: batch- and device-independent."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(seed), i))(sample_index)


def check_labels(labels, num_classes: int) -> np.ndarray:
    """Class ids as int32 (B,), each in [0, num_classes] (num_classes is the null class)."""
    labels = np.asarray(labels, np.int32).reshape(-1)
    bad = labels[(labels < 0) | (labels > num_classes)]
    if bad.size:
        raise ValueError(f"class ids must be in [0, {num_classes}) or {num_classes} (the null "
                         f"class, unconditional); got {sorted(set(bad.tolist()))}")
    return labels


def to_uint8(images: jax.Array, pixel_range: tuple[float, float]) -> jax.Array:
    """Images in [low, high] → uint8 as the official code: round((x − low)·255/(high − low)),
    clipped; i.e. round((x + 1)·127.5) for [−1, 1] and round(x·255) for [0, 1]."""
    low, high = pixel_range
    return jnp.clip(jnp.round((images - low) * (255.0 / (high - low))), 0, 255).astype(jnp.uint8)


def from_uint8(images: np.ndarray, pixel_range: tuple[float, float]) -> np.ndarray:
    """uint8 images → float32 in [low, high]: x/127.5 − 1 for [−1, 1], x/255 for [0, 1]."""
    low, high = pixel_range
    return images.astype(np.float32) / (255.0 / (high - low)) + low


class Sampler:
    """The public samplers' common part: the generator, its tokenizer and the settings; params
    replicated on every device; batches split over the mesh's data axes and padded to a multiple
    of their size (the padding rows repeat the last one and are cut from the outputs); label
    checks; one compiled function per kind of call; input images as uint8 or as floats in the
    tokenizer's `VALUE_RANGE`."""


    def __init__(self, generator, tokenizer, gen_params, tok_params, settings, mesh=None):
        self.generator, self.tokenizer, self.settings = generator, tokenizer, settings
        self.mesh = mesh if mesh is not None else parallel.make_mesh({"data": -1})
        self._replicated = parallel.replicated(self.mesh)
        self._batch_sharding = parallel.batch_sharding(self.mesh)
        self._batch_multiple = parallel.data_parallel_size(self.mesh)
        self._jitted = {}
        self._generate_bytes = {}  # batch → bytes per device (`generate_bytes`)
        self.set_params(gen_params, tok_params)

    def set_params(self, gen_params, tok_params) -> None:
        """New weights of the same shapes (e.g. during training): compiled samplers are reused.
        Abstract weights (`jax.ShapeDtypeStruct` leaves) make a sampler that can only be lowered,
        which is all the memory planner needs (`generate_bytes`)."""
        self.gen_params, self.tok_params = (
            jax.tree_util.tree_map(self._place, params) for params in (gen_params, tok_params))

    def _place(self, array):
        if isinstance(array, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=self._replicated)
        return jax.device_put(array, self._replicated)

    def check_labels(self, labels) -> np.ndarray:
        return check_labels(labels, self.generator.num_classes)

    def _edit_labels(self, labels, batch: int) -> np.ndarray:
        """One class id per edited image: `labels` broadcast, or the null class (unconditional)."""
        labels = np.full((batch,), self.generator.num_classes) if labels is None else labels
        return self.check_labels(np.broadcast_to(labels, (batch,)))

    def _image_batch(self, images) -> np.ndarray:
        """(B, H, W, 3) images from one image or a batch; uint8 becomes float32 in the tokenizer's range,
        floats are taken as they are."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype == np.uint8:
            images = from_uint8(images, self.tokenizer.VALUE_RANGE)
        return images

    def _pad(self, x) -> jax.Array:
        """A batch on the mesh, padded to a multiple of the data-parallel size."""
        return jax.device_put(parallel.pad_to_multiple(np.asarray(x), self._batch_multiple),
                              self._batch_sharding)

    @staticmethod
    def _sample_index(first_index: int, n: int) -> np.ndarray:
        """Global sample indices of a batch: they alone (with the seed) decide its random draws."""
        return np.arange(first_index, first_index + n, dtype=np.int32)

    @staticmethod
    def _unpad(outputs, n: int):
        """A NamedTuple of outputs (arrays or None) as NumPy, without the padding rows; on every
        process, whichever devices made them."""
        return type(outputs)(*(None if x is None else multihost.to_host(x)[:n] for x in outputs))

    def generate_bytes(self, batch: int) -> int:
        """Bytes one device needs, beyond the weights it already holds, to `generate` a batch of
        `batch` images (a multiple of the data-parallel size): XLA's buffer assignment of the
        compiled call, its temporaries and outputs. Compiles (once per batch size), runs nothing."""
        if batch not in self._generate_bytes:
            memory = self._lower_generate(batch).compile().memory_analysis()
            if memory is None:
                raise UserError(f"the {jax.default_backend()} backend reports no compiled memory "
                                "use, so sample.batch_size=0 cannot size the batch: set "
                                "--config.sample.batch_size")
            self._generate_bytes[batch] = int(memory.temp_size_in_bytes + memory.output_size_in_bytes)
        return self._generate_bytes[batch]

    def _lower_generate(self, batch: int) -> jax.stages.Lowered:
        """`generate` of `batch` null-class labels, lowered but not compiled (for `generate_bytes`)."""
        raise NotImplementedError

    def _jit(self, key, fn):
        """`jax.jit(fn)`, made once per `key`, which names everything static that fn closes over."""
        if key not in self._jitted:
            mesh = self.mesh.abstract_mesh

            @functools.wraps(fn)  # fn's name in compile logs and profiles
            def traced_on_the_mesh(*args):  # kernels that must run per device see the mesh
                with jax.sharding.use_abstract_mesh(mesh):
                    return fn(*args)
            self._jitted[key] = jax.jit(traced_on_the_mesh)
        return self._jitted[key]
