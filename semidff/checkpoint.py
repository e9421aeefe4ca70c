"""Model checkpoints on disk: one self-describing file per trained model, loaded without pickle code.

    save_model_checkpoint("teacher.pt", "teacher", cfg, {"rfcn": rfcn.state_dict()}, meta={"epoch": 3})
    ckpt = load_model_checkpoint("teacher.pt", expected_kind="teacher")
    rfcn = build_teacher(ckpt)            # an RFCN in eval mode with the saved weights

A checkpoint holds the resolved config it was trained with (so the architecture is rebuilt from
the file alone), the state dicts of its modules, and a small plain-data ``meta`` dict. It is read
with ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling is refused.
``kind`` is "teacher" (an R-FCN, stage 1) or "flow" (stage 2: the propagator plus the student's
fine-tuned task heads).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from semidff.atomic import atomic_path
from semidff.config import Config, ConfigError
from semidff.safe_load import UnreadableFileError, UnsafeFileError, load_weights_only

CHECKPOINT_FORMAT = "semidff-checkpoint/1"
Kind = Literal["teacher", "flow"]


class ModelCheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of another kind or for another architecture."""


@dataclass
class ModelCheckpoint:
    """A loaded checkpoint.

    kind: "teacher" or "flow". config: the resolved Config it was trained with.
    state_dicts: module name ("rfcn", "propagator", ...) -> state_dict.
    meta: plain data (epoch, step, metrics, the teacher checksum a flow model was distilled from...).
    sha256: checksum of the file, the identity other stages record for lineage.
    """

    kind: Kind
    config: Config
    state_dicts: dict[str, dict[str, torch.Tensor]]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None
    sha256: Optional[str] = None


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def save_model_checkpoint(
    path: str | Path,
    kind: Kind,
    config: Config,
    state_dicts: dict[str, dict[str, torch.Tensor]],
    meta: Optional[dict[str, Any]] = None,
) -> str:
    """Write a checkpoint atomically (temporary file, then rename) and return its SHA-256.

    The same content gives the same bytes (and so the same SHA-256) whatever the path: torch
    names the records inside its zip archive after the file it is given by name, so the payload
    is written through an open handle (records named "archive/...") rather than to the temporary
    file's random name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "config": config.model_dump(mode="json"),
        "state_dicts": {name: {k: v.detach().cpu() for k, v in sd.items()} for name, sd in state_dicts.items()},
        "meta": dict(meta or {}),
    }
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:  # a handle: no file name inside the zip
        torch.save(payload, handle)
    return file_sha256(path)


def load_model_checkpoint(path: str | Path, expected_kind: Optional[Kind] = None) -> ModelCheckpoint:
    """Read a checkpoint written by :func:`save_model_checkpoint` (weights_only, on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ModelCheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = load_weights_only(path)
    except UnsafeFileError as exc:
        raise ModelCheckpointError(
            f"checkpoint {path} is not a semidff checkpoint and was not loaded: {exc}. Use a file written by "
            "semidff train-teacher / semidff train, from a source you trust"
        ) from None
    except UnreadableFileError as exc:
        raise ModelCheckpointError(
            f"checkpoint {path} could not be read: {exc}; it must be a semidff checkpoint (semidff train-teacher / "
            "semidff train write them)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ModelCheckpointError(
            f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file (found format {found!r}); "
            "a plain torchvision ResNet state_dict goes in model.backbone.pretrained instead"
        )
    kind = payload.get("kind")
    if expected_kind is not None and kind != expected_kind:
        raise ModelCheckpointError(f"checkpoint {path} holds a {kind!r} model, expected a {expected_kind!r} model")
    try:
        config = Config.model_validate(payload["config"])
    except Exception as exc:  # noqa: BLE001
        raise ModelCheckpointError(f"checkpoint {path}: its saved config is not valid for this semidff version: {exc}") from None
    return ModelCheckpoint(
        kind=kind,
        config=config,
        state_dicts=payload["state_dicts"],
        meta=payload.get("meta", {}),
        path=path,
        sha256=file_sha256(path),
    )


def build_teacher(checkpoint: ModelCheckpoint, device: torch.device | str = "cpu"):
    """The frozen R-FCN of a teacher (or of a flow checkpoint's student heads), in eval mode."""
    from semidff.models.build import build_rfcn

    if "rfcn" not in checkpoint.state_dicts:
        raise ModelCheckpointError(f"checkpoint {checkpoint.path} has no 'rfcn' weights (has: {sorted(checkpoint.state_dicts)})")
    rfcn = build_rfcn(checkpoint.config.model)
    try:
        rfcn.load_state_dict(checkpoint.state_dicts["rfcn"])
    except RuntimeError as exc:
        raise ModelCheckpointError(f"checkpoint {checkpoint.path}: R-FCN weights do not fit its own config: {exc}") from None
    return rfcn.to(device).eval()


PROPAGATOR_KEYS = ("model.flownet", "model.predictor")
"""The model keys that describe the flow network, not the teacher's spatial module: a teacher
checkpoint serves stage-2 runs of any flow-network setting (Table 3a's residual predictor too)."""


def check_same_model(checkpoint: ModelCheckpoint, config: Config, keys: tuple[str, ...] = ("model",),
                     ignore: tuple[str, ...] = ()) -> None:
    """Refuse a checkpoint whose architecture sections differ from the run's config, naming the keys.

    ignore: dotted keys (and everything under them) not compared, e.g. :data:`PROPAGATOR_KEYS`
    when the checkpoint is a teacher and only its spatial module is used.
    """
    saved = checkpoint.config.model_dump(mode="json")
    wanted = config.model_dump(mode="json")
    differences = []
    for section in keys:
        differences += [d for d in _differences(saved.get(section), wanted.get(section), section)
                        if not any(d.startswith(f"{key}.") or d.startswith(f"{key}:") for key in ignore)]
    if differences:
        raise ConfigError(
            f"checkpoint {checkpoint.path} was trained with a different configuration:\n  "
            + "\n  ".join(differences[:10])
            + "\nUse the checkpoint's config (semidff config show can print it) or a matching checkpoint."
        )


def _differences(saved: Any, wanted: Any, prefix: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(saved) | set(wanted)):
            out += _differences(saved.get(key), wanted.get(key), f"{prefix}.{key}")
        return out
    return [] if saved == wanted else [f"{prefix}: checkpoint {saved!r}, config {wanted!r}"]
