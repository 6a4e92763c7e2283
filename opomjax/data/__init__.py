"""opomjax.data: face datasets and privacy protocols as canonical-frame chips.

Datasets are tensorflow-datasets builders (``array_record`` files, read without TensorFlow); a protocol is a
pure split of a dataset's files into probe identities (training and test photos) and distractors.

Example::

  from opomjax import data
  protocol = data.load_protocol("privacy_lfw", num_identities=5)  # LFW from ../shared/datasets/ (or lfw_dir=)
  protocol.train.shape   # (5, 10, 128, 128, 3) uint8
"""

from opomjax.data.loading import PROTOCOLS, load_protocol, make_builder, open_prepared, prepare
from opomjax.data.sources import DatasetNotFoundError, default_data_dir, find_lfw_dir
from opomjax.data.protocols import (
    PRIVACY_LFW, PRIVACY_LFW_FEW_SHOT, FileSplit, Protocol, SplitRule, list_identity_folder, release_split,
    split_identities)

__all__ = [
    "PROTOCOLS", "PRIVACY_LFW", "PRIVACY_LFW_FEW_SHOT", "DatasetNotFoundError", "FileSplit", "Protocol",
    "SplitRule", "default_data_dir", "find_lfw_dir", "list_identity_folder", "load_protocol", "make_builder",
    "open_prepared", "prepare", "release_split", "split_identities",
]
