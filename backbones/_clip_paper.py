"""Paper profile: the real CLIP ViT-B/32 and ViT-L/14 checkpoints and their 8 fine-tuned vision encoders.

:func:`load_clip_paper` returns a :class:`PaperCLIP`: one encoder module, the pretrained and per-task fine-tuned
weights as state dicts *of that module* (same keys, float32), and a frozen zero-shot head per task.

Two checkpoint formats (``source``):

``"hf"`` (default) -- transformers
    pretrained ``openai/clip-vit-base-patch32`` / ``openai/clip-vit-large-patch14`` (``CLIPModel``), fine-tuned
    ``tanganke/clip-vit-{base-patch32,large-patch14}_<task>`` (FusionBench's ``CLIPVisionModel`` checkpoints).
    The encoder is :class:`CLIPVisionEncoder`: the pretrained model's vision tower and ``visual_projection``,
    ``pixel_values -> visual_projection(pooler_output)``, i.e. exactly ``CLIPModel.get_image_features``.

    *Mergeable*: every ``vision_model.*`` parameter. ``visual_projection.weight`` is a parameter of the encoder
    but **not mergeable**: the tanganke checkpoints are vision towers only (FusionBench fine-tunes the vision model
    and keeps the projection frozen), so every task's projection *is* the pretrained one and its task vector would
    be identically zero. It is mergeable only if some fine-tuned checkpoint carries a ``visual_projection.weight``
    that differs from the pretrained one (a ``CLIPModel`` / ``CLIPVisionModelWithProjection`` checkpoint); tasks
    whose checkpoint has none then use the pretrained projection. Non-mergeable parameters stay in the encoder
    module, so ``torch.func.functional_call(encoder, weights, x)`` with ``weights`` = a mergeable state works.

    Where: ``root`` (or ``$MERGE_BENCH_MODELS``) laid out as ``<root>/<hub id>`` (``<root>/openai/clip-vit-base-
    patch32``, ``<root>/tanganke/clip-vit-base-patch32_mnist``: ``save_pretrained`` output or
    ``huggingface-cli download <id> --local-dir <root>/<id>``). A checkpoint not found there (or with no root) is
    taken from the Hub / HF cache (``huggingface_hub.snapshot_download``, config, tokenizer and weights only);
    if that fails too (e.g. ``HF_HUB_OFFLINE=1`` without a cached copy) a :class:`~benchmark.errors.UserError` names
    every missing checkpoint and how to provide it. Fine-tuned weight files are read directly (safetensors, or
    ``torch.load(weights_only=True)`` for ``pytorch_model.bin``); keys of transformers 4.x (``vision_model.*``)
    and 5.x (``embeddings.*``, ``encoder.*``, ...) ``CLIPVisionModel`` checkpoints are both accepted.

``"open_clip"`` -- mlfoundations/task_vectors checkpoints (open_clip ``ViT-B-32`` / ``ViT-L-14``, OpenAI weights,
    QuickGELU)
    ``<root>/<arch>/zeroshot.pt``, ``<root>/<arch>/<Name>/finetuned.pt`` (``<Name>Val`` also accepted) and optional
    ``<root>/<arch>/head_<Name>.pt``, with ``<Name>`` in SUN397, Cars, RESISC45, EuroSAT, SVHN, GTSRB, MNIST, DTD
    (``<root>`` = task_vectors' ``checkpoints/`` directory; ``<root>/task_vectors/<arch>`` is also looked at).
    ``.safetensors`` files of the same stem work too. The encoder is open_clip's visual tower (``model.visual``:
    ``pixel_values -> pooled @ proj``); *all* its parameters are mergeable, ``proj`` included, because task_vectors
    fine-tunes the whole image encoder.

    Files are read as plain state dicts (``torch.load(weights_only=True)``), with or without a ``model.`` (the
    ``ImageEncoder`` wrapper) / ``visual.`` prefix. The original release pickles whole ``ImageEncoder`` and
    ``ClassificationHead`` objects; unpickling runs code named by the file, so it is refused unless
    ``allow_pickle=True`` is passed for files you trust. Then task_vectors' own classes (``src.modeling.*``) are
    replaced by inert stand-in modules (the original code base need not be importable) and only the tensors are
    kept.

    Heads: ``head_<Name>.pt`` when present for a task (the heads the task_vectors encoders were fine-tuned and
    evaluated with; ``ClassificationHead`` weights already carry the logit scale), otherwise built from the text
    tower as below. The text tower is taken from ``zeroshot.pt`` when it has one (task_vectors deletes it from its
    ``ImageEncoder``, keeping only embeddings and ``logit_scale``), else from open_clip's own ``openai`` weights
    (network or HF cache).

Zero-shot heads (both sources): for each class, the normalized text embeddings of every template
(:func:`tasks.vision_paper.clip_templates`) are averaged and renormalized, stacked to ``[C, e]`` and multiplied by
CLIP's ``exp(logit_scale)``. Logits are ``normalize(encoder(x)) @ head.T`` (:meth:`PaperCLIP.logits`): the head
expects L2-normalized image embeddings, as in CLIP, task_vectors and FusionBench.

``checkpoints`` maps each checkpoint's name (hub id, or path relative to ``root`` for open_clip) to the sha256 of
its weight file; a sharded checkpoint's value is the sha256 of its ``"<file> <sha256>"`` lines, in file order.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.cache import sha256_file
from benchmark.errors import UserError
from benchmark.lazy_state import LazyState
from backbones._base import converted_finetuned
from backbones.clip_vit import ImageEncoder
from tasks.vision_paper import DATASETS, TemplateSource, clip_templates

__all__ = [
    "MODELS_ENV_VAR",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PAPER_MODELS",
    "ClipPaperSpec",
    "CLIPVisionEncoder",
    "PaperCLIP",
    "load_clip_paper",
    "read_state_file",
]

MODELS_ENV_VAR = "MERGE_BENCH_MODELS"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipPaperSpec:
    pretrained: str  # hub id of the pretrained CLIPModel
    finetuned: str  # hub id of a fine-tuned vision model, with "{task}"
    open_clip_arch: str  # open_clip model name of the task_vectors checkpoints
    open_clip_quick_gelu: bool = True  # OpenAI CLIP weights were trained with QuickGELU


PAPER_MODELS: dict[str, ClipPaperSpec] = {
    "clip_vit_b32": ClipPaperSpec(
        "openai/clip-vit-base-patch32", "tanganke/clip-vit-base-patch32_{task}", "ViT-B-32"
    ),
    "clip_vit_l14": ClipPaperSpec(
        "openai/clip-vit-large-patch14", "tanganke/clip-vit-large-patch14_{task}", "ViT-L-14"
    ),
}


@dataclass
class PaperCLIP:
    """What the paper-profile CLIP adapter needs; see the module docstring."""

    encoder: nn.Module
    pretrained: dict[str, Tensor]  # mergeable encoder parameters, float32 (the encoder's own tensors)
    finetuned: dict[str, Mapping[str, Tensor]]  # task -> same keys as ``pretrained`` (a LazyState with a cache)
    heads: dict[str, Tensor]  # task -> [C, e], rows = normalized class embeddings * exp(logit_scale); frozen
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    checkpoints: dict[str, str]  # checkpoint name -> sha256
    source: str = "hf"
    logit_scale: float = 100.0  # exp(logit_scale) of the pretrained CLIP (built heads carry it)
    frozen: list[str] = field(default_factory=list)  # encoder parameters that are not mergeable

    def logits(self, task: str, embeddings: Tensor) -> Tensor:
        """Task logits from image embeddings (``encoder`` outputs): ``normalize(embeddings) @ head.T``."""
        head = self.heads[task].to(device=embeddings.device, dtype=embeddings.dtype)
        return F.normalize(embeddings, dim=-1) @ head.T


#: transformers CLIP vision tower + visual projection (``CLIPModel.get_image_features``): the tiny profile's encoder
#: class, so both profiles run the same module and parameter names (``vision_model.*``, ``visual_projection.*``).
CLIPVisionEncoder = ImageEncoder


# ----------------------------------------------------------------------------------------------------------------
# Reading weight files


class _Stub(nn.Module):
    """Stands in, while unpickling a trusted task_vectors checkpoint, for a class of the original code base (or one
    an installed library no longer has). Only its parameters/buffers/submodules are used."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError(f"{type(self).__name__} is an unpickling stand-in and cannot run")


_STUBS: dict[tuple[str, str], type] = {}


def _stub_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(name, (_Stub,), {"__module__": f"{__name__}.<stub {module}>", "__qualname__": name})
    return _STUBS[key]


class _TrustedUnpickler(pickle.Unpickler):
    """Unpickler for ``allow_pickle=True``: task_vectors' own classes (``src.*``, ``modeling.*``) become stand-ins
    without importing anything; classes of open_clip / fusion_bench that no longer exist become stand-ins too."""

    _never_import = ("src", "modeling", "heads", "task_vectors")
    _may_be_gone = ("open_clip", "fusion_bench")

    def find_class(self, module: str, name: str) -> Any:
        top = module.split(".")[0]
        if top in self._never_import:
            return _stub_class(module, name)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if top in self._may_be_gone:
                return _stub_class(module, name)
            raise


_trusted_pickle = types.ModuleType("_merge_bench_trusted_pickle")
_trusted_pickle.Unpickler = _TrustedUnpickler  # type: ignore[attr-defined]
_trusted_pickle.load = lambda f, **kw: _TrustedUnpickler(f, **kw).load()  # type: ignore[attr-defined]


def _state_of(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
                return _state_of(obj[key], path)
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
    if isinstance(obj, Tensor):
        return {"weight": obj}
    raise UserError(f"{path}: not a state dict or module (got {type(obj).__name__})")


def read_state_file(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, Tensor]:
    """Tensors of one weight file: safetensors, or a ``torch.load``-able state dict (``weights_only=True``).

    With ``allow_pickle=True`` a file that is not a plain state dict (task_vectors' pickled ``ImageEncoder`` /
    ``ClassificationHead``, via ``torch.save`` or plain ``pickle``) is unpickled with :class:`_TrustedUnpickler` and
    its ``state_dict()`` taken. Only use it on files you trust: unpickling can run arbitrary code.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it is about to refuse anyway
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
        return _state_of(obj, path)
    except UserError:
        raise
    except Exception as safe_err:  # noqa: BLE001 -- weights_only refusal or a non-torch pickle
        if not allow_pickle:
            msg = str(safe_err).strip().splitlines()[0] if str(safe_err).strip() else type(safe_err).__name__
            raise UserError(
                f"{path} is not a plain state dict (torch.load(weights_only=True) refused it: {msg}). If it is a "
                "task_vectors checkpoint (a pickled ImageEncoder/ClassificationHead) that you trust, pass "
                "allow_pickle=True (unpickling can run code); or convert it once to a state dict / safetensors"
            ) from safe_err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_trusted_pickle)
    except Exception:  # noqa: BLE001 -- not a torch.save file: task_vectors' torch_load_old wrote plain pickles
        with open(path, "rb") as f:
            obj = _TrustedUnpickler(f).load()
    return _state_of(obj, path)


def _weight_files(d: Path) -> list[Path]:
    """The weight files of a transformers checkpoint directory (safetensors preferred, as transformers does)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (d / single).is_file():
            return [d / single]
        if (d / index).is_file():
            with open(d / index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            files = [d / s for s in shards]
            if all(p.is_file() for p in files):
                return files
    return []


def _checkpoint_hash(files: Sequence[Path]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.name} {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0] if s else ''}"


_CONFIG_PATTERNS = ["*.json", "*.txt"]


def _hf_dir(repo_id: str, root: Path | None) -> tuple[Path | None, str]:
    """A local directory holding ``repo_id``'s config and weights, or ``(None, why)``."""
    why = []
    if root is not None:
        p = root / repo_id
        if p.is_dir() and _weight_files(p):
            return p, ""
        why.append(f"not at {p}" if not p.is_dir() else f"no model.safetensors/pytorch_model.bin in {p}")
    try:
        from huggingface_hub import snapshot_download

        d = Path(snapshot_download(repo_id, allow_patterns=[*_CONFIG_PATTERNS, "*.safetensors"]))
        if not _weight_files(d):
            d = Path(snapshot_download(repo_id, allow_patterns=[*_CONFIG_PATTERNS, "pytorch_model*.bin"]))
        if _weight_files(d):
            return d, ""
        why.append(f"the Hub snapshot {d} has no weight files")
    except Exception as e:  # noqa: BLE001 -- offline, not cached, gated, not found
        why.append(f"Hub/HF cache: {_first_line(e)}")
    return None, "; ".join(why)


def _missing_error(missing: list[tuple[str, str]], root: Path | None) -> UserError:
    details = "; ".join(f"[{name}] {why}" for name, why in missing)
    where = str(root) if root is not None else f"a directory passed as root= or ${MODELS_ENV_VAR}"
    return UserError(
        f"missing checkpoint{'s' if len(missing) > 1 else ''} {', '.join(n for n, _ in missing)}. "
        f"Provide each under {where}/<id> (save_pretrained output, or `huggingface-cli download <id> --local-dir "
        f"<root>/<id>`), or run once with network access (HF_HUB_OFFLINE unset) to fill the HF cache. {details}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Heads


@torch.no_grad()
def _zero_shot_head(
    embed_text: Callable[[list[str]], Tensor], classnames: Sequence[str], templates: Sequence[Callable[[str], str]],
    scale: float, chunk: int = 256,
) -> Tensor:
    texts = [t(c) for c in classnames for t in templates]
    embs = torch.cat([embed_text(texts[i : i + chunk]).float().cpu() for i in range(0, len(texts), chunk)])
    embs = F.normalize(embs, dim=-1).view(len(classnames), len(templates), -1).mean(1)
    return (F.normalize(embs, dim=-1) * scale).contiguous()


def _check_inputs(model: str, tasks: Sequence[str], classnames: Mapping[str, Sequence[str]]) -> ClipPaperSpec:
    if model not in PAPER_MODELS:
        raise UserError(f"unknown paper CLIP model {model!r}; valid: {', '.join(PAPER_MODELS)}")
    if not tasks:
        raise UserError("load_clip_paper needs at least one task")
    missing = [t for t in tasks if t not in classnames or not classnames[t]]
    if missing:
        raise UserError(f"no class names given for task(s) {', '.join(missing)}")
    return PAPER_MODELS[model]


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuned states: converted once into the cache, then streamed

def _finetuned_state(cache: Any, spec: ClipPaperSpec, source: str, name: str, sha256: str, keys: list[str],
                     read: Callable[[], Mapping[str, Tensor]]) -> Mapping[str, Tensor]:
    """A task's fine-tuned encoder state: converted once into the ``cache`` and streamed from there, or held in
    RAM without one (:func:`backbones._base.converted_finetuned`); the entry is keyed by the checkpoint's sha256."""
    config = {"model": spec.pretrained, "source": source, "checkpoint": name, "sha256": sha256, "keys": keys}
    return converted_finetuned(cache, config, read, keys)[0]


def _restrict(state: Mapping[str, Tensor], keys: list[str]) -> Mapping[str, Tensor]:
    return state.restricted(keys) if isinstance(state, LazyState) else {k: state[k] for k in keys}


# ----------------------------------------------------------------------------------------------------------------
# transformers (openai/* + tanganke/*)


_HF_VISION_TOP = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")


def _hf_vision_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of a CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel checkpoint (transformers 4.x or 5.x)
    mapped to :class:`CLIPVisionEncoder` names; text-tower keys dropped."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        if k.startswith("vision_model."):
            out[k] = v
        elif k.startswith(_HF_VISION_TOP):
            out["vision_model." + k] = v
        elif k == "visual_projection.weight":
            out[k] = v
    return out


def _hf_preprocess(d: Path, vision_image_size: int) -> tuple[int, tuple, tuple]:
    size, mean, std = vision_image_size, OPENAI_MEAN, OPENAI_STD
    p = d / "preprocessor_config.json"
    if p.is_file():
        with open(p) as f:
            cfg = json.load(f)
        crop = cfg.get("crop_size")
        if isinstance(crop, Mapping):
            crop = crop.get("height") or crop.get("shortest_edge")
        size = int(crop or size)
        mean = tuple(float(x) for x in cfg.get("image_mean", mean))
        std = tuple(float(x) for x in cfg.get("image_std", std))
    return size, mean, std  # type: ignore[return-value]


def _own_memory(module: nn.Module, files: Sequence[Path]) -> None:
    """Give every parameter and buffer of ``module`` memory of its own, read from the checkpoint ``files`` with
    ``pread`` where they hold it (safetensors, same name and shape), else copied.

    Why: transformers memory-maps a safetensors checkpoint and its tensors are views of the map, so the vision
    tower kept the whole pretrained ``CLIPModel`` file mapped after the text tower was dropped, and every page the
    zero-shot heads had touched stayed resident: on the ViT-L/14 stand-ins 1.49 GB of file-backed RSS through the
    merge, ~0.3 GB of it text-tower pages. Reading rather than copying from the map keeps the vision pages from
    being faulted in only to be copied (a copy would hold them twice until the map closes)."""
    lazies = [LazyState(f) for f in files if f.suffix == ".safetensors"]
    named = [(n, t, True) for n, t in module.named_parameters()] + [(n, t, False) for n, t in module.named_buffers()]
    for name, t, is_param in named:
        src = next((s for s in lazies if name in s), None)
        fresh = None
        if src is not None and src.numel(name) == t.numel() and t.numel():
            fresh = src[name].reshape(t.shape).to(t.dtype)
            # one element (one page of the map) guards against a tensor transformers converted while loading
            if not torch.equal(fresh.reshape(-1)[:1], t.detach().reshape(-1)[:1]):
                fresh = None
        if fresh is None:
            fresh = t.detach().clone()
        if is_param:
            t.data = fresh
        else:
            owner, _, attr = name.rpartition(".")
            module.get_submodule(owner)._buffers[attr] = fresh


def _load_hf(
    spec: ClipPaperSpec, tasks: Sequence[str], classnames: Mapping[str, Sequence[str]], root: Path | None,
    templates: TemplateSource, device: str | torch.device, cache: Any = None,
) -> PaperCLIP:
    from transformers import AutoTokenizer, CLIPModel

    ids = {"": spec.pretrained, **{t: spec.finetuned.format(task=t) for t in tasks}}
    dirs: dict[str, Path] = {}
    missing = []
    for key, repo in ids.items():
        d, why = _hf_dir(repo, root)
        if d is None:
            missing.append((repo, why))
        else:
            dirs[key] = d
    if missing:
        raise _missing_error(missing, root)

    pre_dir = dirs[""]
    checkpoints = {spec.pretrained: _checkpoint_hash(_weight_files(pre_dir))}
    try:
        clip = CLIPModel.from_pretrained(pre_dir, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(pre_dir)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot load {spec.pretrained} from {pre_dir}: {_first_line(e)}") from e
    clip.eval()

    # zero-shot heads from the text tower
    scale = float(clip.logit_scale.detach().exp())
    max_len = int(clip.config.text_config.max_position_embeddings)
    clip.to(device)

    def embed(texts: list[str]) -> Tensor:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(device)
        out = clip.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out if isinstance(out, Tensor) else out.pooler_output

    heads = {t: _zero_shot_head(embed, classnames[t], clip_templates(t, templates), scale) for t in tasks}
    clip.to("cpu")

    encoder = CLIPVisionEncoder(clip.vision_model, clip.visual_projection).eval()
    del clip
    _own_memory(encoder, _weight_files(pre_dir))
    params = {k: p.detach() for k, p in encoder.named_parameters()}
    vision_keys = [k for k in params if k.startswith("vision_model.")]

    proj = "visual_projection.weight"

    def read_task(t: str) -> dict[str, Tensor]:
        """The task's checkpoint, checked, as float32 tensors under every encoder parameter name (the pretrained
        projection where the checkpoint is a vision tower only)."""
        repo, d = ids[t], dirs[t]
        state: dict[str, Tensor] = {}
        for f in _weight_files(d):
            state.update(read_state_file(f))
        state = _hf_vision_state(state)
        miss = [k for k in vision_keys if k not in state]
        if miss:
            raise UserError(
                f"{repo} ({d}) is not a CLIP vision checkpoint of {spec.pretrained}'s architecture: "
                f"{len(miss)} of its vision weights are missing, e.g. {', '.join(miss[:3])}"
            )
        bad = [k for k in state if k in params and tuple(state[k].shape) != tuple(params[k].shape)]
        if bad:
            k = bad[0]
            raise UserError(
                f"{repo}: {k} has shape {tuple(state[k].shape)}, the pretrained {spec.pretrained} "
                f"{tuple(params[k].shape)}: not a fine-tuned copy of this model"
            )
        return {k: (state[k] if k in state else params[k]).float() for k in params}

    full: dict[str, Mapping[str, Tensor]] = {}
    for t in tasks:
        files = _weight_files(dirs[t])
        checkpoints[ids[t]] = _checkpoint_hash(files)
        full[t] = _finetuned_state(cache, spec, "hf", ids[t], checkpoints[ids[t]], list(params),
                                   lambda t=t: read_task(t))

    proj_mergeable = any(not torch.equal(s[proj], params[proj].float()) for s in full.values())
    keys = vision_keys + ([proj] if proj_mergeable else [])
    # the encoder's own tensors: functional_call never writes them, so the pool can share them (no second copy)
    pretrained = {k: params[k].float() for k in keys}
    finetuned = {t: _restrict(s, keys) for t, s in full.items()}
    size, mean, std = _hf_preprocess(pre_dir, int(encoder.vision_model.config.image_size))
    return PaperCLIP(
        encoder=encoder, pretrained=pretrained, finetuned=finetuned, heads=heads, image_size=size, mean=mean,
        std=std, checkpoints=checkpoints, source="hf", logit_scale=scale,
        frozen=[k for k in params if k not in keys],
    )


# ----------------------------------------------------------------------------------------------------------------
# open_clip (mlfoundations/task_vectors)


_TEXT_TOWER_PROBE = "transformer.resblocks.0.attn.in_proj_weight"


def _split_open_clip(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(visual tower keys without ``visual.``, everything else) of an open_clip CLIP / ImageEncoder state."""
    st = {}
    for k, v in state.items():
        k = k.removeprefix("module.").removeprefix("model.")
        st[k] = v
    if not any(k.startswith("visual.") for k in st):  # a visual-tower-only state dict
        return st, {}
    visual = {k[len("visual."):]: v for k, v in st.items() if k.startswith("visual.")}
    rest = {k: v for k, v in st.items() if not k.startswith("visual.")}
    return visual, rest


def _first_file(candidates: Sequence[Path]) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _load_open_clip(
    spec: ClipPaperSpec, tasks: Sequence[str], classnames: Mapping[str, Sequence[str]], root: Path | None,
    templates: TemplateSource, device: str | torch.device, allow_pickle: bool, cache: Any = None,
) -> PaperCLIP:
    import open_clip

    arch = spec.open_clip_arch
    if root is None:
        raise UserError(
            f"source='open_clip' reads task_vectors checkpoints from a local directory (they are not on the Hub): "
            f"pass root= or set ${MODELS_ENV_VAR} to the directory holding {arch}/zeroshot.pt"
        )
    base = next((d for d in (root / arch, root / "task_vectors" / arch) if d.is_dir()), root / arch)
    exts = (".pt", ".safetensors", ".bin")
    names = {t: DATASETS[t].task_vectors_name if t in DATASETS else t for t in tasks}
    zs = _first_file([base / f"zeroshot{e}" for e in exts])
    ft_files = {t: _first_file([base / f"{n}{s}" / f"finetuned{e}" for s in ("", "Val") for e in exts])
                for t, n in names.items()}
    missing = ([] if zs else [(f"{arch}/zeroshot.pt", f"not in {base}")]) + [
        (f"{arch}/{names[t]}/finetuned.pt", f"not in {base / names[t]}") for t, f in ft_files.items() if f is None
    ]
    if missing:
        lines = "; ".join(f"{n} ({w})" for n, w in missing)
        raise UserError(
            f"missing task_vectors checkpoint{'s' if len(missing) > 1 else ''}: {lines}. Download them from "
            f"mlfoundations/task_vectors (README, 'Checkpoints') into {root}/<arch>/ as zeroshot.pt, "
            f"<Name>/finetuned.pt and head_<Name>.pt"
        )

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return str(p)

    try:
        model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=spec.open_clip_quick_gelu)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"open_clip cannot build {arch!r}: {_first_line(e)}") from e
    model.eval()
    checkpoints = {rel(zs): _checkpoint_hash([zs])}
    visual, rest = _split_open_clip(read_state_file(zs, allow_pickle))
    vparams = dict(model.visual.named_parameters())

    def check_visual(state: Mapping[str, Tensor], where: Path) -> None:
        miss = [k for k in vparams if k not in state]
        if miss:
            raise UserError(f"{where} is not an open_clip {arch} image encoder: missing {', '.join(miss[:3])}")
        bad = [k for k in vparams if tuple(state[k].shape) != tuple(vparams[k].shape)]
        if bad:
            raise UserError(f"{where}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, {arch} expects "
                            f"{tuple(vparams[bad[0]].shape)}")

    check_visual(visual, zs)
    model.visual.load_state_dict({k: v for k, v in visual.items() if k in model.visual.state_dict()}, strict=False)
    if "logit_scale" in rest:
        model.logit_scale.data.copy_(rest["logit_scale"].reshape(()))

    # heads: task_vectors' head files first, else the text tower
    heads: dict[str, Tensor] = {}
    head_files = {t: _first_file([base / f"head_{n}{s}{e}" for s in ("", "Val") for e in exts])
                  for t, n in names.items()}
    for t, hf in head_files.items():
        if hf is None:
            continue
        hs = read_state_file(hf, allow_pickle)
        w = hs.get("weight")
        if w is None or w.ndim != 2:
            raise UserError(f"{hf}: no [C, e] 'weight' (keys: {', '.join(list(hs)[:5])})")
        if "bias" in hs and bool(hs["bias"].abs().gt(0).any()):
            raise UserError(f"{hf}: the head has a non-zero bias; PaperCLIP heads are bias-free zero-shot heads")
        if w.shape[0] != len(classnames[t]):
            raise UserError(f"{hf} has {w.shape[0]} classes, the task {t} {len(classnames[t])}")
        heads[t] = w.detach().float().clone()
        checkpoints[rel(hf)] = _checkpoint_hash([hf])

    scale = float(model.logit_scale.detach().exp())
    todo = [t for t in tasks if t not in heads]
    if todo:
        text_model = model
        if _TEXT_TOWER_PROBE in rest:
            missing_text = model.load_state_dict({**{f"visual.{k}": v for k, v in visual.items()}, **rest},
                                                 strict=False).missing_keys
            missing_text = [k for k in missing_text if not k.startswith("visual.")]
            if missing_text:
                raise UserError(f"{zs}: incomplete text tower, missing {', '.join(missing_text[:3])}")
        else:
            try:
                from open_clip.pretrained import download_pretrained, get_pretrained_cfg

                cfg = get_pretrained_cfg(arch, "openai")
                if not cfg:
                    raise RuntimeError(f"open_clip has no 'openai' weights for {arch}")
                path = Path(download_pretrained(cfg))
                text_model = open_clip.create_model(
                    arch, pretrained=str(path), force_quick_gelu=spec.open_clip_quick_gelu
                ).eval()
                checkpoints[f"open_clip:{arch}/openai"] = _checkpoint_hash([path])
            except Exception as e:  # noqa: BLE001
                raise UserError(
                    f"no zero-shot heads for {', '.join(todo)}: no head_<Name>.pt in {base}, {zs.name} has no text "
                    f"tower, and open_clip's {arch} 'openai' weights are unavailable ({_first_line(e)}). Put "
                    f"task_vectors' head files next to the checkpoints, or run once with network access"
                ) from e
            scale = float(text_model.logit_scale.detach().exp())
        tokenizer = open_clip.get_tokenizer(arch)
        text_model.to(device)

        def embed(texts: list[str]) -> Tensor:
            return text_model.encode_text(tokenizer(texts).to(device))

        for t in todo:
            heads[t] = _zero_shot_head(embed, classnames[t], clip_templates(t, templates), scale)
        text_model.to("cpu")

    encoder = model.visual
    # the encoder's own tensors: functional_call never writes them, so the pool can share them (no second copy)
    pretrained = {k: v.detach().float() for k, v in encoder.named_parameters()}
    keys = list(pretrained)

    def read_task(f: Path) -> dict[str, Tensor]:
        v, _ = _split_open_clip(read_state_file(f, allow_pickle))
        check_visual(v, f)
        return {k: v[k].detach().float() for k in keys}

    finetuned = {}
    for t, f in ft_files.items():
        assert f is not None
        checkpoints[rel(f)] = _checkpoint_hash([f])
        finetuned[t] = _finetuned_state(cache, spec, "open_clip", rel(f), checkpoints[rel(f)], keys,
                                        lambda f=f: read_task(f))
    del model
    pcfg = dict(open_clip.get_model_preprocess_cfg(encoder))
    size = pcfg.get("size", encoder.image_size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return PaperCLIP(
        encoder=encoder, pretrained=pretrained, finetuned=finetuned, heads=heads, image_size=size,
        mean=tuple(pcfg.get("mean", OPENAI_MEAN)), std=tuple(pcfg.get("std", OPENAI_STD)),  # type: ignore[arg-type]
        checkpoints=checkpoints, source="open_clip", logit_scale=scale, frozen=[],
    )


# ----------------------------------------------------------------------------------------------------------------


def load_clip_paper(
    model: str,
    tasks: list[str],
    classnames: dict[str, list[str]],
    *,
    root: str | os.PathLike | None = None,
    source: str = "hf",
    templates: TemplateSource = "merge-bench",
    allow_pickle: bool = False,
    device: str | torch.device = "cpu",
    cache: Any = None,
) -> PaperCLIP:
    """Load a paper CLIP model (``clip_vit_b32`` / ``clip_vit_l14``) with the fine-tuned encoders of ``tasks``.

    ``classnames[task]``: the class names the zero-shot heads are built from (in label order). ``root`` (default
    ``$MERGE_BENCH_MODELS``): where checkpoints are looked for first. ``source``: ``"hf"`` or ``"open_clip"``.
    ``templates``: ``"merge-bench"``, ``"fusion_bench"`` or ``{task: [templates]}`` (see
    :func:`tasks.vision_paper.clip_templates`). ``allow_pickle``: unpickle task_vectors' original (pickled)
    checkpoints -- only for files you trust. ``device``: where the text tower runs while building the heads.
    ``cache`` (a :class:`benchmark.cache.Cache`): convert each fine-tuned checkpoint once into it and return the
    fine-tuned states as :class:`~benchmark.lazy_state.LazyState` s (read one tensor at a time, never all in RAM);
    without one they are read into RAM. ``pretrained`` shares the encoder's tensors. Everything returned lives on
    the CPU.
    """
    spec = _check_inputs(model, tasks, classnames)
    root_s = root if root is not None else os.environ.get(MODELS_ENV_VAR) or None
    root_p = Path(root_s).expanduser() if root_s is not None else None
    if source == "hf":
        out = _load_hf(spec, list(tasks), classnames, root_p, templates, device, cache)
    elif source == "open_clip":
        out = _load_open_clip(spec, list(tasks), classnames, root_p, templates, device, allow_pickle, cache)
    else:
        raise UserError(f"unknown checkpoint source {source!r}; valid: hf, open_clip")
    for h in out.heads.values():
        h.requires_grad_(False)
    return out
