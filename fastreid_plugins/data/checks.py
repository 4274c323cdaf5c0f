"""Input checks: bad dataset input gets an error that names the file and what was expected."""

import os

from ..errors import ConfigError, DatasetError

__all__ = ["check_dataset_items", "check_identity_batches"]


def check_dataset_items(items, split, dataset_names):
    """Refuse an empty split or image paths that do not exist, naming the first offenders.

    Args:
        items (list[tuple]): FastReID ``(img_path, pid, camid, ...)`` tuples.
        split (str): "train" or "test", for the message.
        dataset_names (Sequence[str]): the configured dataset names, for the message.

    Raises:
        DatasetError: the split is empty (a ``ValueError``).
        FileNotFoundError: some image files are missing (up to 10 are listed).
    """
    names = ", ".join(dataset_names)
    if len(items) == 0:
        raise DatasetError(f"The {split} split of dataset(s) {names} is empty: no image was found. "
                         f"Check FASTREID_DATASETS={os.getenv('FASTREID_DATASETS', 'datasets')!r} "
                         "and the dataset's folder layout.")
    missing = [it[0] for it in items if not os.path.isfile(it[0])]
    if missing:
        listed = "\n  ".join(missing[:10])
        raise FileNotFoundError(f"{len(missing)} of {len(items)} {split} images of {names} do not "
                                f"exist, e.g.:\n  {listed}")


def check_identity_batches(items, ims_per_batch, num_instance, world_size=1, sampler="the sampler"):
    """Refuse batch settings an identity (PK) sampler can never fill: FastReID's
    ``NaiveIdentitySampler`` / ``BalancedIdentitySampler`` then loop forever without yielding a
    batch, and training hangs at its first iteration with no message.

    A PK batch (Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification",
    2017) holds ``P = IMS_PER_BATCH / NUM_INSTANCE`` identities of ``K = NUM_INSTANCE`` images
    each, so the per-process batch must be a multiple of ``NUM_INSTANCE`` and the training set
    must have at least ``P`` identities.

    Args:
        items (list[tuple]): the training ``(img_path, pid, camid, ...)`` tuples.
        ims_per_batch (int): ``SOLVER.IMS_PER_BATCH`` (all processes together).
        num_instance (int): ``DATALOADER.NUM_INSTANCE``.
        world_size (int): number of training processes.
        sampler (str): the sampler's name, for the message.

    Raises:
        ConfigError: the batch settings do not fit the sampler / processes (a ``ValueError``).
        DatasetError: the training set has too few identities for a batch (a ``ValueError``).
    """
    ims, k, w = int(ims_per_batch), int(num_instance), int(world_size)
    if k < 1:
        raise ConfigError(f"DATALOADER.NUM_INSTANCE must be >= 1 for {sampler}, got {k}.")
    if ims % w:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH={ims} is not divisible by the {w} training "
                         "processes: each process takes IMS_PER_BATCH / world size images.")
    mini = ims // w
    if mini % k:
        step = k * w
        lo, hi = (ims // step) * step, (ims // step + 1) * step
        hint = f"{lo} or {hi}" if lo > 0 else f"{hi}"
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={ims} ({mini} per process) is not a multiple of "
            f"DATALOADER.NUM_INSTANCE={k}: {sampler} fills a batch with NUM_INSTANCE images per "
            f"identity and would never complete one (training would hang). Use an "
            f"IMS_PER_BATCH that is a multiple of {step}, e.g. {hint}.")
    num_pids = len({it[1] for it in items})
    need = ims // k
    if num_pids < need:
        raise DatasetError(
            f"{sampler} needs SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = {ims} / {k} = "
            f"{need} training identities per batch, but the training set has {num_pids}: it "
            "would never fill a batch (training would hang). Lower SOLVER.IMS_PER_BATCH to at "
            f"most {num_pids * k} (a multiple of {k * w}) or raise DATALOADER.NUM_INSTANCE.")
