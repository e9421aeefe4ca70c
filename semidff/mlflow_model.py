"""semidff's video detectors as MLflow models: a registered model loads anywhere with ``mlflow.pyfunc``.

    with mlflow.start_run():
        info = log_detector_model("runs/teacher/teacher.pt", "runs/flow/flow.pt")     # an MLflow model with MLmodel
    model = mlflow.pyfunc.load_model("models:/semidff-flow/3")                         # or info.model_uri
    detections = model.predict(frames)                 # frames: (N, H, W, 3) uint8 RGB of one video, in order
    detections = model.predict(frames, params={"key_interval": 5, "mode": "copy"})
    teacher_pt, flow_pt = detector_files("models:/semidff-flow/3")  # the checkpoints, for semidff itself

The model's artifacts are the two semidff checkpoint files (``teacher.pt``, and ``flow.pt`` for a
flow model; loaded with ``weights_only=True``) and, as code, the ``semidff`` package, so loading
needs only its pip requirements (torch, numpy, ...), not an installed semidff. ``predict`` runs the
detector over the frames in order (key frames every ΔT, features propagated in between) and
returns one row per detection: ``frame`` (index in the input), ``is_key``, ``x1, y1, x2, y2``
(pixels of the input frames, inclusive corners), ``score``, ``label`` (1-based), ``class_name``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc
import numpy as np

MODEL_ARTIFACT = "detector_model"  # the MLflow model's folder in its run
TEACHER_ARTIFACT, FLOW_ARTIFACT = "teacher", "flow"
DETECTION_COLUMNS = ("frame", "is_key", "x1", "y1", "x2", "y2", "score", "label", "class_name")
PIP_REQUIREMENTS = ["torch", "numpy", "pyarrow", "av", "decord", "pydantic", "pyyaml", "pillow", "mlflow"]


class VideoDetectorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a semidff detector (see the module docstring for inputs and outputs)."""

    def load_context(self, context):  # no type hints: MLflow reads them as a (wrong) input schema
        from semidff.checkpoint import load_model_checkpoint

        self.teacher_path = context.artifacts[TEACHER_ARTIFACT]
        self.flow_path = context.artifacts.get(FLOW_ARTIFACT)
        trained = load_model_checkpoint(self.flow_path or self.teacher_path)
        self.default_key_interval = int(trained.meta.get("key_interval") or trained.config.video.key_interval)
        self.default_mode = "flow" if self.flow_path else "frame"
        self._loaded: dict[tuple[str, int], Any] = {}

    def _detector(self, mode: str, key_interval: int) -> Any:
        from semidff.inference import load_detector

        if (mode, key_interval) not in self._loaded:
            self._loaded[(mode, key_interval)] = load_detector(self.teacher_path, self.flow_path, mode=mode, key_interval=key_interval)
        return self._loaded[(mode, key_interval)]

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        params = params or {}
        frames = np.asarray(model_input)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"predict takes the frames of one video as a (N, H, W, 3) uint8 RGB array, got {frames.dtype} {frames.shape}")
        loaded = self._detector(str(params.get("mode") or self.default_mode), int(params.get("key_interval") or self.default_key_interval))
        rows = []
        with torch.inference_mode():
            results, _ = loaded.detector.run(list(frames), loaded.short_side, loaded.max_long_side)
        for index, result in enumerate(results):
            detections = result.detections
            for box, score, label in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist()):
                rows.append((index, bool(result.is_key), *box, float(score), int(label), loaded.class_names[int(label) - 1]))
        return pd.DataFrame(rows, columns=list(DETECTION_COLUMNS))


def log_detector_model(teacher_checkpoint: str | Path, flow_checkpoint: Optional[str | Path] = None,
                       name: str = MODEL_ARTIFACT) -> Any:
    """Log the detector of these checkpoints as an MLflow model of the active run (``name``);
    returns MLflow's ModelInfo (``model_uri`` loads it, :func:`register_detector_model` registers it)."""
    import semidff

    artifacts = {TEACHER_ARTIFACT: str(teacher_checkpoint)}
    if flow_checkpoint is not None:
        artifacts[FLOW_ARTIFACT] = str(flow_checkpoint)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=VideoDetectorModel(),
        artifacts=artifacts,
        code_paths=[str(Path(semidff.__file__).parent)],
        pip_requirements=PIP_REQUIREMENTS,
        signature=_signature(),
    )


def _signature() -> Any:
    """Frames in, and the two settings a caller may change per call ("" / 0: the model's own)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        params=ParamSchema([ParamSpec("mode", "string", ""), ParamSpec("key_interval", "long", 0)]),
    )


def detector_files(model_uri: str) -> tuple[Path, Optional[Path]]:
    """(teacher.pt, flow.pt or None) of a logged or registered detector model (``models:/name/3``,
    ``models:/name@alias``, ``runs:/<run id>/detector_model``), downloaded to a local folder."""
    import mlflow.artifacts
    from mlflow.models import Model

    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    stored = Model.load(str(folder)).flavors.get("python_function", {}).get("artifacts", {})
    if TEACHER_ARTIFACT not in stored:
        raise FileNotFoundError(f"{model_uri}: not a semidff detector model (its MLmodel lists no {TEACHER_ARTIFACT!r} artifact)")
    flow = stored.get(FLOW_ARTIFACT)
    return folder / stored[TEACHER_ARTIFACT]["path"], (folder / flow["path"]) if flow else None
