"""Training data: grain sources (procedural, image folder, ArrayRecord, TFDS), transforms and the
deterministic, shardable, exactly resumable input pipeline. TensorFlow-free.

    from bigvar import data
    it = data.make_train_iterator(data.data_section(), image_size=32, global_batch=64,
                                  seed=0)
"""
from bigvar.data.pipeline import (data_section, iterator_state_to_bytes, make_source,
                                  make_train_iterator, restore_iterator_state, skipped_count)
from bigvar.data.procedural import ProceduralSource, class_names
from bigvar.data.sources import ArrayRecordSource, ImageFolderSource, TfdsSource

__all__ = [
    "ArrayRecordSource", "ImageFolderSource", "ProceduralSource", "TfdsSource", "class_names",
    "data_section", "iterator_state_to_bytes", "make_source", "make_train_iterator",
    "restore_iterator_state", "skipped_count",
]
