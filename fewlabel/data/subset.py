"""The training subset (a multilabel-stratified draw, :mod:`fewlabel.data.stratify`), the eval
set, and the class distribution table and figure.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from fewlabel.errors import PipelineError
from fewlabel.plots import pyplot
from fewlabel.artifacts import lacking_kind, training_targets
from fewlabel.io import read_lines
from fewlabel.params import SubsetParams
from fewlabel.data.stratify import stratified_subset
from fewlabel.data.voc import IMAGE_EXTENSIONS


def select_subsets(labels: pd.DataFrame, classes: tuple[str, ...], train_split: str, eval_split: str,
                   subset: SubsetParams, never_drawn: set[str] = frozenset(),
                   pool_setting: str = "the pool") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train subset, eval set) rows of the label table, each in image-id order (the eval
    set capped at ``subset.eval_max_images``).

    The images ``never_drawn`` (the pool: the ids the suggest stage ranks) are never drawn: labels that arrive
    for them through ``suggestions/labelled.txt`` then cannot change the draw."""
    pools = {}
    for key, split in (("data.train_split", train_split), ("data.eval_split", eval_split)):
        pool = labels[labels["split"] == split].sort_values("image_id").reset_index(drop=True)
        if pool.empty:
            found = ", ".join(sorted(labels["split"].astype(str).unique()))
            raise PipelineError(f"data/labels.csv has no image in split '{split}' ({key}); "
                                f"splits present: {found}")
        pools[split] = pool

    train_pool = pools[train_split]
    outside = train_pool[~train_pool["image_id"].astype(str).isin(never_drawn)].reset_index(drop=True)
    if len(outside) < len(train_pool):  # the pool overlaps the training split: its images are never drawn
        if outside.empty:
            raise PipelineError(f"params.yaml: {pool_setting} holds every image of the '{train_split}' split "
                                f"(data.train_split), so none is left to draw the training subset from; point the "
                                f"pool at other images (e.g. VOC2007: train_split: train, pool_split: val) or set "
                                f"data.train_split to a list outside the pool")
        if subset.n_images > len(outside):
            raise PipelineError(f"subset.n_images={subset.n_images} but only {len(outside)} images of the "
                                f"'{train_split}' split are outside {pool_setting} (its images are never drawn); "
                                f"set subset.n_images to at most {len(outside)} or make the pool smaller")
        train_pool = outside
    if subset.n_images > len(train_pool):
        raise PipelineError(f"subset.n_images={subset.n_images} but the '{train_split}' split has only "
                            f"{len(train_pool)} images; set subset.n_images to at most {len(train_pool)}")
    quotas = {classes.index(name): target for name, target in subset.class_quota.items()}
    targets = training_targets(train_pool[list(classes)].to_numpy())
    try:
        chosen = stratified_subset(targets, subset.n_images, subset.min_per_class, quotas, subset.seed,
                                   class_names=classes)
    except PipelineError as error:
        raise PipelineError(f"params.yaml: {error}") from error
    check_every_class_learnable(targets, chosen, classes, train_split, subset)
    train = train_pool.iloc[chosen].reset_index(drop=True)

    eval_pool = pools[eval_split]
    if subset.eval_max_images is None or subset.eval_max_images >= len(eval_pool):
        return train, eval_pool
    chosen = stratified_subset(eval_pool[list(classes)].to_numpy() == 1, subset.eval_max_images,
                               seed=subset.seed, class_names=classes)
    return train, eval_pool.iloc[chosen].reset_index(drop=True)


def add_included(train: pd.DataFrame, labels: pd.DataFrame, include_ids: list[str], eval_split: str,
                 source: str) -> pd.DataFrame:
    """The training subset plus the images ``include_ids`` (ids you labelled, e.g. from
    ``suggestions/next.csv``), on top of the stratified draw, in image-id order.

    Each id must have an annotation (a row of the label table) and must not be an evaluation
    image; ``source`` (the list file) is named in the error. A file name or path
    (``000006.jpg``, ``JPEGImages/000006``) is read as the id it names when that id is known.
    """
    if not include_ids:
        return train
    rows = labels.drop_duplicates("image_id").set_index("image_id", drop=False)
    include_ids = [_as_image_id(line, rows.index) for line in include_ids]
    missing = [i for i in include_ids if i not in rows.index]
    if missing:
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise PipelineError(f"{source}: lists image id(s) {listed} that have no annotation in the data set "
                            f"(data/labels.csv); label them and add their XML to Annotations/ (see README, "
                            f"'Labelling more images'), or remove them from the list (one bare id per line, "
                            f"like 000006: no folder, no extension)")
    in_eval = [i for i in include_ids if rows.loc[i, "split"] == eval_split]
    if in_eval:
        raise PipelineError(f"{source}: lists evaluation image(s) {', '.join(in_eval[:10])} (split "
                            f"'{eval_split}'); training on them would inflate the metrics: remove them")
    extra = rows.loc[[i for i in dict.fromkeys(include_ids) if i not in set(train["image_id"])]]
    combined = pd.concat([train, extra[train.columns]], ignore_index=True)
    return combined.sort_values("image_id").reset_index(drop=True)


def read_included(path: str) -> list[str]:
    """The lines of the list of labelled ids (``--include``); a missing file says how to recreate it."""
    if not os.path.exists(path):
        raise PipelineError(f"{path}: not found; it lists the ids you labelled, one per line, and must exist "
                            f"(an empty file is fine): recreate it with `git checkout {path}` or `touch {path}`")
    return read_lines(path, "a list of image ids")


def _as_image_id(line: str, known) -> str:
    """``line`` if it is a known id, else the known id its file name names (``000006.jpg``,
    ``JPEGImages/000006``), else ``line`` unchanged."""
    if line in known:
        return line
    name = line.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem, extension = os.path.splitext(name)
    for candidate in (name, stem if extension.lower() in IMAGE_EXTENSIONS else None):
        if candidate in known:
            return candidate
    return line


def check_every_class_learnable(targets: np.ndarray, chosen: np.ndarray, classes: tuple[str, ...],
                                train_split: str, subset: SubsetParams) -> None:
    """Each class needs a positive and a negative training image, or train cannot fit its SVM:
    fail here, before featurize, naming the class and the setting to change."""
    drawn = targets[chosen]
    for index, name in enumerate(classes):
        kind = lacking_kind(drawn[:, index])
        if not targets[:, index].any():
            raise PipelineError(f"data/labels.csv: no image of the '{train_split}' split has class '{name}', "
                                f"so it cannot be learnt; add annotated images of it, or remove it from "
                                f"data.classes in params.yaml")
        if kind == "positive":
            if name in subset.class_quota:
                fix = (f"subset.class_quota.{name}=0 asks for that; the classifier needs at least one: "
                       f"raise the quota, or remove '{name}' from data.classes")
            else:
                fix = f"raise subset.min_per_class (now {subset.min_per_class}) to at least 1"
            raise PipelineError(f"params.yaml: class '{name}' has no positive among the {len(chosen)} "
                                f"training images, so it cannot be learnt; {fix}")
        if kind == "negative":
            raise PipelineError(f"params.yaml: every one of the {len(chosen)} training images has class "
                                f"'{name}', so it cannot be learnt; raise subset.n_images or set "
                                f"subset.class_quota.{name} below {len(chosen)}")


def pool_limited_classes(distribution: pd.DataFrame, min_per_class: int) -> list[str]:
    """Classes whose train pool holds fewer than ``min_per_class`` positives (all are taken)."""
    return distribution.loc[distribution["pool"] < min_per_class, "class"].tolist()


def class_distribution(train_pool: pd.DataFrame, train: pd.DataFrame, eval_set: pd.DataFrame,
                       classes: tuple[str, ...]) -> pd.DataFrame:
    """Positives per class in the pool, the drawn train subset and the eval set.

    Train counts include difficult-only objects (training treats them as present);
    eval counts only the positives that evaluation scores (label 1).
    """
    def positives(frame, present):
        return [int(present(frame[c]).sum()) for c in classes]

    table = pd.DataFrame({
        "class": list(classes),
        "train": positives(train, lambda column: column >= 0),
        "eval": positives(eval_set, lambda column: column == 1),
        "pool": positives(train_pool, lambda column: column >= 0),
    })
    table["train_fraction"] = table["train"] / max(len(train), 1)
    table["pool_fraction"] = table["pool"] / max(len(train_pool), 1)
    return table


def distribution_figure(distribution: pd.DataFrame, n_train: int, n_eval: int):
    """A horizontal bar chart of positives per class, train subset beside eval set."""
    plt = pyplot()
    positions = np.arange(len(distribution))
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.3 * len(distribution) + 1.5), sharey=True)
    for axis, column, title in ((axes[0], "train", f"train subset ({n_train} images)"),
                                (axes[1], "eval", f"eval set ({n_eval} images)")):
        axis.barh(positions, distribution[column], color="tab:blue" if column == "train" else "tab:orange")
        for y, count in zip(positions, distribution[column]):
            axis.text(count, y, f" {count}", va="center", fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("images with the class")
    axes[0].set_yticks(positions, distribution["class"])
    axes[0].invert_yaxis()
    figure.tight_layout()
    return figure
