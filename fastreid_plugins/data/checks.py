"""Input checks: bad dataset input gets an error that names the file and what was expected."""

import os

__all__ = ["check_dataset_items"]


def check_dataset_items(items, split, dataset_names):
    """Refuse an empty split or image paths that do not exist, naming the first offenders.

    Args:
        items (list[tuple]): FastReID ``(img_path, pid, camid, ...)`` tuples.
        split (str): "train" or "test", for the message.
        dataset_names (Sequence[str]): the configured dataset names, for the message.

    Raises:
        ValueError: the split is empty.
        FileNotFoundError: some image files are missing (up to 10 are listed).
    """
    names = ", ".join(dataset_names)
    if len(items) == 0:
        raise ValueError(f"The {split} split of dataset(s) {names} is empty: no image was found. "
                         f"Check FASTREID_DATASETS={os.getenv('FASTREID_DATASETS', 'datasets')!r} "
                         "and the dataset's folder layout.")
    missing = [it[0] for it in items if not os.path.isfile(it[0])]
    if missing:
        listed = "\n  ".join(missing[:10])
        raise FileNotFoundError(f"{len(missing)} of {len(items)} {split} images of {names} do not "
                                f"exist, e.g.:\n  {listed}")
