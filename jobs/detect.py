"""Detect objects in one video with a trained teacher (+ flow network) and write an annotated copy.

    semidff detect VIDEO --teacher out/teacher/teacher.pt --flow out/flow/flow.pt \\
        -o annotated.mp4 --key-interval 10
    python -m jobs.detect VIDEO --teacher ... --flow ... -o annotated.mp4   # the same command

Every frame gets its boxes, class names and scores; key frames (the teacher ran) and propagated
frames (feature flow, or copied detections) are marked, with the measured frames/s of the
detector so far. The video is decoded, detected and encoded one frame at a time, so its length
does not matter. Frames/s counts the networks only (as DFF reports it); decoding and encoding are
reported separately in the summary. Beside the video, ``--predictions`` (default: the output's
name with ``.predictions.jsonl``) gets one JSON line per frame: its index, time, kind and
detections.

The annotated video has the source's frames at the source's rate (the manifest's: the frames'
timestamps, or the stream's declared rate where they have none). Damage is handled as in every
stage (``semidff.video.decode.OpenedVideo.read_frames``): the frames from the first that does not
decode to the next codec keyframe are lost, decoding goes on from that keyframe, and the lost
frames stay in the output as grey "did not decode" frames and as ``"kind": "lost"`` predictions,
each range reported with the same message as the cache stage's. Frames the container lists but
that do not decode at its end are not written (the probe counts only frames that decode).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import typer

from jobs.cli_common import echo_progress, exit_on, run_module
from semidff.inference import annotated_frames, load_detector, prediction_record
from semidff.atomic import write_text_atomically
from semidff.models.video_detector import VideoTiming

OUTPUT_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov")  # containers that take the H.264 the annotated video is encoded in

Progress = Callable[[str], None]


@dataclass
class DetectSummary:
    """What a detection run did; fps are frames per second of the detector's compute alone."""

    output: Path
    mode: str
    key_interval: int
    frames: int  # frames written: detected + lost
    key_frames: int
    detector_fps: float
    end_to_end_fps: float
    wall_seconds: float
    predictions: Optional[Path] = None
    fps: float = 0.0  # the rate the annotated video is written at
    lost_frames: int = 0  # frames of the source that did not decode (grey in the video, "lost" in the predictions)
    damage: list[str] = field(default_factory=list)  # one message per lost range (semidff.video.decode.LostFrames.message)

    def format(self) -> str:
        lines = [
            f"wrote {self.output}: {self.frames} frames ({self.key_frames} key frames), mode={self.mode}, "
            f"ΔT={self.key_interval}, {self.fps:g} fps video, detector {self.detector_fps:.2f} frames/s, "
            f"with decoding {self.end_to_end_fps:.2f} frames/s, {self.wall_seconds:.1f} s in all"
        ]
        if self.predictions is not None:
            lines.append(f"predictions: {self.predictions}")
        if self.lost_frames:
            lines.append(f"{self.lost_frames} frames did not decode (grey in the video, kind \"lost\" in the predictions):")
            lines += [f"  {message}" for message in self.damage]
        return "\n".join(lines)


def run(
    video: str,
    teacher_checkpoint: str,
    output: str,
    flow_checkpoint: Optional[str] = None,
    mode: Optional[str] = None,
    key_interval: int = 10,
    score_threshold: float = 0.5,
    device: str = "auto",
    max_frames: Optional[int] = None,
    progress: Optional[Progress] = None,
    predictions: Optional[str] = None,
    decoder: str = "auto",
) -> DetectSummary:
    """Annotate ``video`` into ``output`` (OUTPUT_SUFFIXES: H.264) with the detector of
    :func:`load_detector` (``mode``, ``key_interval``) and :func:`annotated_frames`, and write its
    predictions (default :func:`predictions_path_for`). ``decoder``: as ``clips.decoder``."""
    from semidff.data.synthetic import encode_video
    from semidff.video.decode import LostFrames, open_video
    from semidff.video.probe import probe_video

    say = progress or (lambda line: None)
    if Path(output).suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"-o {output}: the annotated video is H.264, which needs a {', '.join(OUTPUT_SUFFIXES)} file name")
    predictions_path = Path(predictions) if predictions else predictions_path_for(output)
    loaded = load_detector(teacher_checkpoint, flow_checkpoint, mode, key_interval, device)
    info = probe_video(video)
    if not info.ok:
        raise ValueError(f"{video}: cannot be read ({info.error})")
    if info.fps:
        fps = info.fps
    else:  # neither timestamps nor a declared rate: the video has no clock at all
        fps = 25.0
        say(f"{video}: the file declares no frame rate and its frames have no timestamps; writing at {fps:g} fps")
    total = min(info.num_frames, max_frames) if max_frames else info.num_frames
    say(f"{video}: {total} frames at {fps:g} fps, {info.width}x{info.height}; mode={loaded.mode}, ΔT={key_interval}")
    if info.note:
        say(f"  note: {info.note}")
    timing = VideoTiming()
    damage: list[str] = []
    records: list[dict] = []
    started = time.perf_counter()

    def frames_or_gaps(opened):
        """Decoded frames, None for each frame that did not decode."""
        for item in opened.read_frames(range(total)):
            if isinstance(item, LostFrames):
                damage.append(item.message)
                say(f"  damaged: {item.message}")
                yield from (None for index in item.indices if index < total)
            else:
                yield item[1]

    def drawn():
        with open_video(video, decoder=decoder, num_frames=info.num_frames) as opened:
            for result, image in annotated_frames(loaded, frames_or_gaps(opened), timing, score_threshold, frame_shape=(info.height, info.width)):
                records.append(prediction_record(result, loaded.class_names, score_threshold, fps))
                yield image
                if (timing.frames + timing.lost_frames) % 50 == 0:
                    say(f"  {timing.frames + timing.lost_frames}/{total} frames, detector {timing.compute_fps:.2f} frames/s")

    output_path = encode_video(drawn(), output, fps=fps)
    write_text_atomically(predictions_path, "".join(json.dumps(record) + "\n" for record in records))
    summary = DetectSummary(
        output=output_path,
        mode=loaded.mode,
        key_interval=key_interval,
        frames=timing.frames + timing.lost_frames,
        key_frames=timing.key_frames,
        detector_fps=timing.compute_fps,
        end_to_end_fps=timing.end_to_end_fps,
        wall_seconds=time.perf_counter() - started,
        predictions=predictions_path,
        fps=fps,
        lost_frames=timing.lost_frames,
        damage=damage,
    )
    say(summary.format())
    return summary


def predictions_path_for(output: str) -> Path:
    """Where the predictions of an annotated video go by default: ``annotated.mp4`` → ``annotated.predictions.jsonl``."""
    return Path(output).with_suffix(".predictions.jsonl")


# ---------------------------------------------------------------------------------------------
# Command line (`semidff detect`, `python -m jobs.detect`)


def _output_or_out(ctx: typer.Context, value: Optional[Path]) -> Optional[Path]:
    """-o/--output is required; --out (its former name, hidden) stands in for it."""
    if value is None and ctx.params.get("out") is None and not ctx.resilient_parsing:
        raise typer.BadParameter("missing: the annotated video to write, e.g. -o annotated.mp4")
    return value


def resolve_checkpoints(teacher: Optional[str], flow: Optional[str]) -> tuple[str, Optional[str]]:
    """(teacher.pt, flow.pt) from the options: files as given, or the two files of an MLflow model
    (``models:/...``, ``runs:/...``; ``mlflow.tracking_uri`` or $MLFLOW_TRACKING_URI says which store)."""
    if flow and flow.startswith(("models:/", "runs:/")):
        from semidff.mlflow_model import detector_files

        model_teacher, model_flow = detector_files(flow)
        if teacher:
            raise ValueError(f"--flow {flow} brings its own teacher; leave out --teacher")
        return str(model_teacher), str(model_flow) if model_flow else None
    if not teacher:
        raise ValueError("--teacher TEACHER.pt is needed (only a registered model, --flow models:/..., brings its own)")
    return teacher, flow


def detect_command(
    video: str = typer.Argument(..., help="a video file (any container decord reads: mp4, mkv, webm, avi, ...)"),
    teacher: Optional[Path] = typer.Option(
        None, "--teacher", help="teacher checkpoint (semidff train-teacher writes teacher.pt); not needed with --flow models:/...",
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", callback=_output_or_out, show_default=False,
        help="annotated video to write (.mp4, .mkv, .avi or .mov; encoded as H.264); required",
    ),
    flow: Optional[str] = typer.Option(
        None, "--flow",
        help="flow checkpoint (semidff train writes flow.pt), or a registered model (models:/semidff-flow/3, models:/semidff-flow@two-step, "
        "runs:/RUN/detector_model: its teacher comes with it); needed for mode flow",
    ),
    mode: Optional[str] = typer.Option(None, "--mode", help="frame | copy | flow (default: flow with --flow, else frame)"),
    key_interval: int = typer.Option(10, "--key-interval", min=1, help="ΔT: the teacher runs on every ΔT-th frame"),
    score_threshold: float = typer.Option(0.5, "--score-threshold", min=0.0, max=1.0, help="draw detections scoring at least this"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    predictions: Optional[Path] = typer.Option(
        None, "--predictions", show_default=False,
        help="JSON lines, one per frame (index, time, kind key/propagated/lost, detections); default: OUTPUT with .predictions.jsonl",
    ),
    decoder: str = typer.Option("auto", "--decoder", help="auto | pyav | decord (as clips.decoder)"),
    out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="the former name of -o/--output"),
) -> None:
    """Detect objects in VIDEO and write it with boxes, class names, scores, key/propagated frames marked and frames/s;
    frames that do not decode stay in it, grey and marked lost."""
    from semidff.checkpoint import ModelCheckpointError
    from semidff.config import ConfigError
    from semidff.video.decode import VideoOpenError

    with exit_on(ModelCheckpointError, ConfigError, VideoOpenError, ValueError, RuntimeError, FileNotFoundError):
        teacher_path, flow_path = resolve_checkpoints(str(teacher) if teacher else None, flow)
        summary = run(
            video, teacher_path, str(output or out), flow_path, mode, key_interval, score_threshold, device,
            progress=echo_progress, predictions=str(predictions) if predictions else None, decoder=decoder,
        )
    typer.echo(summary.format())


if __name__ == "__main__":  # pragma: no cover
    run_module(detect_command)
