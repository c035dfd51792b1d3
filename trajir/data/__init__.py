"""Training data: image files, seeded synthetic degradations, datasets, the resumable data order, batches.

See docs/architecture.md §6. Typical use::

    from trajir.data import Loader, SyntheticPairs, TaskMix, sample_split
    train, held_out = sample_split()
    mix = TaskMix([(SyntheticPairs(train, "sr", crop=64), 3), (SyntheticPairs(train, "denoise", crop=64), 1)])
    loader = Loader(mix, batch_size=4, seed=0)
    batch = loader.next_batch()  # {"lq", "gt", "task", "name", "epoch"}
"""
from .datasets import PairedFolders, SyntheticPairs, TaskMix, split_holdout
from .degrade import STRENGTH_OPTIONS, TASKS, degrade, degrade_at_strength, strength_options, task_options
from .images import IMAGE_EXTENSIONS, image_size, list_images, read_image, write_png
from .loader import Loader, collate, evaluation_batches
from .rng import as_generator, derive_seed
from .order import EpochSampler
from .samples import sample_images, sample_split

__all__ = [
    "EpochSampler", "IMAGE_EXTENSIONS", "Loader", "PairedFolders", "STRENGTH_OPTIONS", "SyntheticPairs", "TASKS",
    "TaskMix", "as_generator", "collate", "degrade", "degrade_at_strength", "derive_seed", "evaluation_batches",
    "image_size", "list_images",
    "read_image", "sample_images", "sample_split", "split_holdout", "strength_options", "task_options", "write_png",
]
