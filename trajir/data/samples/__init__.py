"""Public-domain and CC0 sample photos shipped for demos, tests and the CPU training configs.

Taken from scikit-image's bundled data and downscaled (longest side 384 px, Lanczos, lossless PNG); README.md
in this folder gives the source and licence of each file.
"""
import pathlib

from ..datasets import split_holdout
from ..images import list_images

FOLDER = pathlib.Path(__file__).resolve().parent
HELD_OUT = 2  # photos kept out of training for validation


def sample_images():
    """The sample photos, sorted by name."""
    return list_images(FOLDER, "samples folder")


def sample_split():
    """``(train, held_out)`` lists of sample photos: a fixed split by file name (:func:`split_holdout`)."""
    return split_holdout(sample_images(), HELD_OUT)
