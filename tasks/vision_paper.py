"""Paper profile: the 8 real vision tasks of FusionBench's CLIP benchmark, read with Hugging Face ``datasets``.

Tasks and the dataset ids FusionBench 0.2.33 reads them from (``fusion_bench_config/dataset/image_classification``):

==============  ===============================  ==========================================================
task            dataset id (config)              task_vectors name (open_clip checkpoints)
==============  ===============================  ==========================================================
sun397          ``tanganke/sun397``              SUN397
stanford-cars   ``tanganke/stanford_cars``       Cars
resisc45        ``tanganke/resisc45``            RESISC45
eurosat         ``tanganke/eurosat``             EuroSAT
svhn            ``svhn`` (``cropped_digits``)    SVHN
gtsrb           ``tanganke/gtsrb``               GTSRB
mnist           ``mnist``                        MNIST
dtd             ``tanganke/dtd``                 DTD
==============  ===============================  ==========================================================

(``svhn`` and ``mnist`` are the Hub's legacy short ids; the Hub redirects them to ``ufldl-stanford/svhn`` and
``ylecun/mnist``.)

Splits
------
* ``test``: the dataset's ``test`` split.
* ``train`` / ``val``: if the dataset has a ``validation`` (or ``val``) split, ``train`` and that split. Otherwise --
  the case for all 8 datasets -- ``val`` is FusionBench's held-out slice of ``train``
  (``fusion_bench.utils.data.train_validation_split`` with ``validation_fraction=0.1, random_seed=0``): a
  ``torch.randperm(n)`` under a generator seeded with 0, whose last ``int(0.1 n)`` indices are ``val`` and the rest
  ``train``. ``train`` is then the complement, so the two never overlap; both are returned in ascending index
  order (the same sets as FusionBench's, read sequentially). Stand-ins with fewer than 10 rows still get one val row.

Where the data is read from
---------------------------
``data_root`` (or ``$MERGE_BENCH_DATA``) names a local directory; the first of ``<root>/<dataset id>`` (e.g.
``<root>/tanganke/sun397``, ``<root>/mnist``) and ``<root>/<task>`` that exists is used. It may hold
``DatasetDict.save_to_disk`` output (``dataset_dict.json``), one ``Dataset.save_to_disk`` directory per split
(``<dir>/train``, ``<dir>/test``), or a local clone of the Hub dataset repository (read with ``load_dataset``).
Without a root, ``datasets.load_dataset(<id>)`` reads the Hub (or the HF cache offline); a failure becomes a
:class:`~benchmark.errors.UserError` saying how to provide the data.

Inputs
------
``TaskData.inputs`` is an :class:`ImageList`: a lazy, sliceable sequence that decodes an image to a ``uint8`` tensor
``[3, H, W]`` (RGB) when indexed. Sizes differ between images, so the consumer resizes with
:func:`to_pixel_values` (CLIP preprocessing: resize the shorter side to ``image_size`` with bicubic interpolation,
center crop, scale to [0, 1], normalize with ``mean``/``std``). ``targets`` is a ``LongTensor``; ``classes`` are
the ``ClassLabel`` names, cleaned for CLIP prompts (:func:`clean_classname`), or FusionBench's hand-written class
names with ``class_names="fusion_bench"``.

Prompt templates
----------------
:data:`TEMPLATES` holds our own short template lists per task (in the spirit of CLIP's and task_vectors').
``clip_templates(task, "fusion_bench")`` returns FusionBench's templates instead. The public tanganke fine-tuned
checkpoints were trained against zero-shot heads built from FusionBench's class names and templates, so use
``class_names="fusion_bench"`` together with ``templates="fusion_bench"`` when reproducing the papers' numbers.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from benchmark.contract import TaskData
from benchmark.errors import UserError

__all__ = [
    "TASKS",
    "DATASETS",
    "TEMPLATES",
    "VAL_FRACTION",
    "VAL_SEED",
    "DATA_ENV_VAR",
    "DatasetSpec",
    "ImageList",
    "clean_classname",
    "clip_templates",
    "fusion_bench_classnames",
    "load_paper_task",
    "to_pixel_values",
    "val_split_indices",
]

DATA_ENV_VAR = "MERGE_BENCH_DATA"
VAL_FRACTION = 0.1
VAL_SEED = 0


@dataclass(frozen=True)
class DatasetSpec:
    hub_id: str
    config: str | None
    task_vectors_name: str  # the dataset's name in mlfoundations/task_vectors checkpoints
    fusion_bench_module: str  # fusion_bench/tasks/clip_classification/<module>.py: classnames + templates


DATASETS: dict[str, DatasetSpec] = {
    "sun397": DatasetSpec("tanganke/sun397", None, "SUN397", "sun397"),
    "stanford-cars": DatasetSpec("tanganke/stanford_cars", None, "Cars", "stanford_cars"),
    "resisc45": DatasetSpec("tanganke/resisc45", None, "RESISC45", "resisc45"),
    "eurosat": DatasetSpec("tanganke/eurosat", None, "EuroSAT", "eurosat"),
    "svhn": DatasetSpec("svhn", "cropped_digits", "SVHN", "svhn"),
    "gtsrb": DatasetSpec("tanganke/gtsrb", None, "GTSRB", "gtsrb"),
    "mnist": DatasetSpec("mnist", None, "MNIST", "mnist"),
    "dtd": DatasetSpec("tanganke/dtd", None, "DTD", "dtd"),
}
TASKS: tuple[str, ...] = tuple(DATASETS)

# Our own wording; "{}" is the class name.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "sun397": (
        "a photo of a {}.",
        "a photo of the {}, a type of place.",
        "a picture taken in a {}.",
    ),
    "stanford-cars": (
        "a photo of a {}, a type of car.",
        "a photo of the {}.",
        "a picture of my {}.",
        "a close-up photo of a {} car.",
    ),
    "resisc45": (
        "a satellite photo of {}.",
        "an aerial view of {}.",
        "a satellite image showing a {}.",
        "aerial imagery of the {}.",
    ),
    "eurosat": (
        "a satellite photo of {}.",
        "a centered satellite image of {}.",
        "a satellite view of a {}.",
    ),
    "svhn": (
        'a photo of the house number "{}".',
        "a street photo of the digit {}.",
        "a photo of the number {}.",
    ),
    "gtsrb": (
        'a photo of a "{}" traffic sign.',
        'a close-up photo of the "{}" road sign.',
        'a zoomed-in picture of a "{}" traffic sign.',
    ),
    "mnist": (
        "a photo of the handwritten digit {}.",
        'an image of the number "{}".',
        "a black and white photo of the digit {}.",
    ),
    "dtd": (
        "a photo of a {} texture.",
        "a close-up photo of a {} pattern.",
        "a photo of a {} surface.",
    ),
}


def _check_task(task: str) -> DatasetSpec:
    if task not in DATASETS:
        raise UserError(f"unknown paper vision task {task!r}; valid: {', '.join(TASKS)}")
    return DATASETS[task]


# ----------------------------------------------------------------------------------------------------------------
# Class names and templates


_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def clean_classname(name: str) -> str:
    """A ``ClassLabel`` name as CLIP prompts expect it.

    Underscores and path separators become spaces (SUN397's ``/a/apartment_building/outdoor`` ->
    ``apartment building outdoor``: its one-letter index directory is dropped); a single capitalized or CamelCase
    word is split and lower-cased (EuroSAT's ``AnnualCrop`` -> ``annual crop``, ``Forest`` -> ``forest``; an
    all-caps word such as ``SUV`` is kept); names that already contain spaces keep their case
    (``AM General Hummer SUV 2000``); runs of whitespace collapse.
    """
    s = str(name).strip()
    s = re.sub(r"^/?[a-z]/(?=.)", "", s)  # SUN397 "/a/abbey" or "a/abbey"
    s = s.strip("/").replace("/", " ").replace("_", " ")
    if " " not in s and (_CAMEL.search(s) or (s[:1].isupper() and not s.isupper())):
        s = _CAMEL.sub(" ", s).lower()
    return re.sub(r"\s+", " ", s).strip()


def _fusion_bench_dir() -> Path:
    """The installed fusion_bench package's directory. Once imported, fusion_bench replaces itself in
    ``sys.modules`` with a lazy module whose ``__spec__`` is None, and ``find_spec`` then raises: ask the module."""
    mod = sys.modules.get("fusion_bench")
    paths = list(getattr(mod, "__path__", None) or []) if mod is not None else []
    if not paths:
        try:
            found = importlib.util.find_spec("fusion_bench")
        except (ImportError, ValueError):
            found = None
        paths = list(found.submodule_search_locations or []) if found is not None else []
    if not paths:
        raise UserError(
            "FusionBench's class names/templates were asked for but the fusion-bench package is not installed "
            "(pip install 'merge-bench[test]' or fusion-bench==0.2.33)"
        )
    return Path(paths[0])


@lru_cache(maxsize=None)
def _fusion_bench_module(task: str) -> dict[str, Any]:
    """Execute FusionBench's ``classnames``/``templates`` file for ``task`` in isolation (its package ``__init__``
    pulls in lightning and more, which these plain lists do not need)."""
    spec = _check_task(task)
    base = _fusion_bench_dir()
    path = base / "tasks" / "clip_classification" / f"{spec.fusion_bench_module}.py"
    if not path.is_file():
        raise UserError(f"fusion-bench has no class names/templates file for {task!r} (looked for {path})")
    namespace: dict[str, Any] = {"__name__": f"_fusion_bench_{spec.fusion_bench_module}"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace


def fusion_bench_classnames(task: str) -> list[str]:
    """FusionBench's hand-written class names for ``task`` (from the installed fusion-bench package)."""
    return [str(c) for c in _fusion_bench_module(task)["classnames"]]


TemplateSource = str | Mapping[str, Sequence[str | Callable[[str], str]]]


def _as_callable(t: str | Callable[[str], str]) -> Callable[[str], str]:
    if callable(t):
        return t
    if "{}" not in t:
        raise UserError(f"prompt template {t!r} has no '{{}}' placeholder for the class name")
    return lambda c, _t=t: _t.format(c)


def clip_templates(task: str, source: TemplateSource = "merge-bench") -> list[Callable[[str], str]]:
    """The prompt templates for ``task`` as callables ``classname -> prompt``.

    ``source``: ``"merge-bench"`` (:data:`TEMPLATES`), ``"fusion_bench"`` (FusionBench's lists, which the public
    tanganke checkpoints were fine-tuned against) or a mapping ``task -> [str with "{}" | callable]``.
    """
    _check_task(task)
    if isinstance(source, str):
        if source == "merge-bench":
            return [_as_callable(t) for t in TEMPLATES[task]]
        if source == "fusion_bench":
            return list(_fusion_bench_module(task)["templates"])
        raise UserError(f"unknown template source {source!r}; valid: merge-bench, fusion_bench, or a dict")
    if task not in source or not source[task]:
        raise UserError(f"no prompt templates given for task {task!r}")
    return [_as_callable(t) for t in source[task]]


# ----------------------------------------------------------------------------------------------------------------
# Images


def _pil_to_uint8(img: Any) -> Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    if img.mode != "RGB":
        img = img.convert("RGB")
    return pil_to_tensor(img)


class ImageList(Sequence):
    """A lazy view of an image column: ``images[i]`` decodes one image to ``uint8 [3, H, W]``; ``images[a:b]``, an
    index list/array/LongTensor or a bool mask give another lazy view; iteration decodes in batches of
    ``batch_size``; :meth:`load` decodes a view to a list of tensors. Picklable (the dataset is memory-mapped)."""

    def __init__(self, dataset: Any, column: str, indices: np.ndarray | None = None, batch_size: int = 64):
        self.dataset = dataset
        self.column = column
        self.indices = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __repr__(self) -> str:
        return f"ImageList({len(self)} images, column={self.column!r})"

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)) or (isinstance(index, Tensor) and index.ndim == 0):
            i = int(index)
            if i < -len(self) or i >= len(self):
                raise IndexError(f"image index {i} out of range for {len(self)} images")
            return _pil_to_uint8(self.dataset[int(self.indices[i])][self.column])
        if isinstance(index, Tensor):
            index = index.cpu().numpy()
        return ImageList(self.dataset, self.column, self.indices[index], self.batch_size)

    def _decode(self, rows: np.ndarray) -> list[Tensor]:
        if rows.size == 0:
            return []
        batch = self.dataset[[int(r) for r in rows]][self.column]
        return [_pil_to_uint8(img) for img in batch]

    def load(self) -> list[Tensor]:
        """Decode every image of this view."""
        return [t for b in self.batches() for t in b]

    def batches(self, batch_size: int | None = None) -> Iterator[list[Tensor]]:
        bs = batch_size or self.batch_size
        for s in range(0, len(self), bs):
            yield self._decode(self.indices[s : s + bs])

    def __iter__(self) -> Iterator[Tensor]:
        for b in self.batches():
            yield from b


def to_pixel_values(
    images: Any,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: str | torch.device | None = None,
) -> Tensor:
    """CLIP preprocessing: resize the shorter side to ``image_size`` (bicubic, antialiased), center crop to
    ``image_size`` x ``image_size``, scale to [0, 1] and normalize. Returns float32 ``[N, 3, S, S]``.

    ``images``: a ``uint8`` tensor ``[N, 3, H, W]`` or ``[3, H, W]``, or an iterable (e.g. an :class:`ImageList`)
    of ``uint8 [3, H, W]`` tensors or PIL images of any sizes. ``device``: where to resize (a GPU is faster).
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    if isinstance(images, Tensor):
        if images.ndim not in (3, 4):
            raise ValueError(f"expected [3,H,W] or [N,3,H,W] images, got shape {tuple(images.shape)}")
        batch = [images]  # one resize call for a whole [N,3,H,W] batch
    else:
        batch = [x if isinstance(x, Tensor) else _pil_to_uint8(x) for x in images]
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    out = []
    for x in batch:
        x = x.to(device) if device is not None else x
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.shape[-3] == 1:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        if x.dtype != torch.uint8:
            raise TypeError(f"to_pixel_values expects uint8 images, got {x.dtype}")
        x = TF.resize(x, [image_size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = TF.center_crop(x, [image_size, image_size])
        out.append(x)
    if not out:
        return torch.empty(0, 3, image_size, image_size, device=device)
    x = torch.cat(out).float().div_(255.0)
    return (x - m) / s


# ----------------------------------------------------------------------------------------------------------------
# Datasets


def val_split_indices(n: int, fraction: float = VAL_FRACTION, seed: int = VAL_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) row indices of a train split without its own validation split, as FusionBench's
    ``train_validation_split`` draws them (``torch.utils.data.random_split`` order), each sorted ascending."""
    n_val = int(n * fraction)
    if n_val == 0 and n >= 2:
        n_val = 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[: n - n_val]), np.sort(perm[n - n_val :])


def _local_candidates(task: str, spec: DatasetSpec, root: Path) -> list[Path]:
    c = [root / spec.hub_id, root / task]
    if task.replace("-", "_") != task:
        c.append(root / task.replace("-", "_"))
    return list(dict.fromkeys(c))


def _open_local(path: Path, spec: DatasetSpec) -> Mapping[str, Any]:
    import datasets

    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    if (path / "state.json").is_file():
        raise UserError(
            f"{path} holds a single saved split; save a DatasetDict (train/test) there, or one "
            "Dataset.save_to_disk directory per split (<dir>/train, <dir>/test)"
        )
    per_split = {p.name: p for p in sorted(path.iterdir()) if p.is_dir() and (p / "state.json").is_file()}
    if per_split:
        return {name: datasets.load_from_disk(str(p)) for name, p in per_split.items()}
    try:  # a local clone of the Hub dataset repository (parquet/arrow/image folders)
        if spec.config is not None:
            try:
                return datasets.load_dataset(str(path), spec.config)
            except (ValueError, FileNotFoundError):
                pass
        return datasets.load_dataset(str(path))
    except Exception as e:  # noqa: BLE001 -- any reader failure is the user's data layout
        raise UserError(f"could not read the dataset in {path}: {type(e).__name__}: {e}") from e


@lru_cache(maxsize=16)
def _open(task: str, root: str | None) -> tuple[Mapping[str, Any], str]:
    spec = _check_task(task)
    if root is not None:
        tried = _local_candidates(task, spec, Path(root))
        for p in tried:
            if p.is_dir():
                return _open_local(p, spec), str(p)
        raise UserError(
            f"no local copy of {spec.hub_id} (task {task}) under {root}; tried "
            + ", ".join(str(p) for p in tried)
            + f". Save it there with datasets' save_to_disk (or clone the Hub repo there), or unset ${DATA_ENV_VAR}"
            " to read the Hugging Face Hub"
        )
    import datasets

    try:
        ds = datasets.load_dataset(spec.hub_id, spec.config) if spec.config else datasets.load_dataset(spec.hub_id)
    except Exception as e:  # noqa: BLE001 -- offline, missing cache, no access: all need the same advice
        raise UserError(
            f"cannot load dataset {spec.hub_id}"
            + (f" ({spec.config})" if spec.config else "")
            + f" for task {task}: {type(e).__name__}: {e}. Run once with network access (HF_HUB_OFFLINE=0) to fill "
            f"the HF cache, or save it with save_to_disk under a directory given as data_root / ${DATA_ENV_VAR} "
            f"(<root>/{spec.hub_id})"
        ) from e
    return ds, f"hub:{spec.hub_id}"


def _columns(ds: Any, where: str) -> tuple[str, str, Any]:
    import datasets

    feats = ds.features
    images = [k for k, f in feats.items() if isinstance(f, datasets.Image)]
    labels = [k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)]
    img = next((k for k in ("image", "img") if k in images), images[0] if images else None)
    lab = next((k for k in ("label", "labels") if k in labels), labels[0] if labels else None)
    if img is None:
        raise UserError(f"{where}: no Image column among {list(feats)}")
    if lab is None:
        raise UserError(f"{where}: no ClassLabel column among {list(feats)}; class names are read from it")
    return img, lab, feats[lab]


def load_paper_task(
    task: str,
    split: str,
    *,
    data_root: str | os.PathLike | None = None,
    class_names: str = "dataset",
) -> TaskData:
    """One split (``train``, ``val`` or ``test``) of a paper vision task; see the module docstring.

    ``class_names``: ``"dataset"`` (the ``ClassLabel`` names, cleaned) or ``"fusion_bench"`` (FusionBench's
    hand-written names, in the same label order; their count is checked against the dataset's).
    """
    spec = _check_task(task)
    if split not in ("train", "val", "test"):
        raise UserError(f"unknown split {split!r}; valid: train, val, test")
    root = data_root if data_root is not None else os.environ.get(DATA_ENV_VAR) or None
    dsd, where = _open(task, str(Path(root).expanduser().resolve()) if root is not None else None)
    splits = list(dsd.keys())

    def get(name: str) -> Any:
        if name not in dsd:
            raise UserError(f"{where} has no {name!r} split (has {', '.join(splits)})")
        return dsd[name]

    own_val = next((s for s in ("validation", "val", "valid") if s in dsd), None)
    indices = None
    if split == "test":
        ds, source = get("test"), "test"
    elif own_val is not None:
        ds, source = (get("train"), "train") if split == "train" else (dsd[own_val], own_val)
    else:
        ds, source = get("train"), "train"
        tr, va = val_split_indices(len(ds))
        indices = tr if split == "train" else va

    img_col, lab_col, label_feature = _columns(ds, f"{where}[{source}]")
    raw_names = list(label_feature.names)
    if class_names == "dataset":
        classes = [clean_classname(n) for n in raw_names]
    elif class_names == "fusion_bench":
        classes = fusion_bench_classnames(task)
        if len(classes) != len(raw_names):
            raise UserError(
                f"FusionBench lists {len(classes)} classes for {task} but {where} has {len(raw_names)}"
            )
    else:
        raise UserError(f"unknown class_names {class_names!r}; valid: dataset, fusion_bench")

    labels = np.asarray(ds.select_columns([lab_col]).with_format("numpy")[lab_col], dtype=np.int64)
    if indices is not None:
        labels = labels[indices]
    targets = torch.from_numpy(labels.copy()).long()
    images = ImageList(ds.select_columns([img_col]), img_col, indices)
    meta = {
        "dataset": spec.hub_id,
        "config": spec.config,
        "source": where,
        "source_split": source,
        "val_carved": own_val is None and split != "test",
        "val_fraction": VAL_FRACTION if own_val is None else None,
        "val_seed": VAL_SEED if own_val is None else None,
        "class_names": class_names,
        "raw_class_names": raw_names,
    }
    return TaskData(inputs=images, targets=targets, classes=classes, meta=meta)
