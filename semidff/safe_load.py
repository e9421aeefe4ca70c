"""The one way semidff reads a PyTorch file: ``torch.load(weights_only=True)``, with errors that say what is wrong.

    data = load_weights_only("teacher.pt")       # tensors, numbers, strings and containers only
    # UnsafeFileError: the file holds other Python objects (loading them could run code): not loaded
    # UnreadableFileError: not a PyTorch file, or damaged

torch's own message for a refused file advises loading it again with ``weights_only=False``;
semidff never does that and never repeats the advice.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class UnsafeFileError(ValueError):
    """The file holds Python objects beyond tensors and plain values; it was not loaded."""


class UnreadableFileError(ValueError):
    """The file is not a PyTorch file, or it is damaged or truncated."""


def load_weights_only(path: str | Path) -> Any:
    """The content of a ``torch.save`` file, on the CPU, loaded with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _reason(exc)
        if "GLOBAL" in str(exc).upper():
            raise UnsafeFileError(f"it holds Python objects other than tensors and plain values ({reason}), "
                                  "which could run code when loaded") from None
        raise UnreadableFileError(f"it is not a PyTorch file, or it is damaged ({reason})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises several types for unreadable files
        raise UnreadableFileError(f"it could not be read ({type(exc).__name__}: {_reason(exc)})") from None


def _reason(error: BaseException) -> str:
    """The first line of torch's message that is not its advice to load unsafely."""
    lines = [line.strip() for line in str(error).splitlines()
             if line.strip() and "weights_only" not in line and "Re-running" not in line and "WeightsUnpickler" not in line]
    text = lines[0] if lines else type(error).__name__
    return text.removeprefix("Weights only load failed.").strip()[:300] or type(error).__name__
