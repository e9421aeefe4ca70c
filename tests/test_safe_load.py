"""Files that are not plain tensors are refused with a message that says why, and never with
torch's advice to load them unsafely."""
import os

import pytest
import torch

from semidff.checkpoint import ModelCheckpointError, load_model_checkpoint
from semidff.safe_load import UnreadableFileError, UnsafeFileError, load_weights_only


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (os.system, ("echo UNPICKLED-ARBITRARY-CODE",))


def test_a_file_with_python_objects_is_refused_and_nothing_runs(tmp_path, capfd):
    path = tmp_path / "evil.pt"
    torch.save({"format": "semidff-checkpoint/1", "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(UnsafeFileError, match="other than tensors and plain values") as caught:
        load_weights_only(path)
    with pytest.raises(ModelCheckpointError, match="not a semidff checkpoint and was not loaded") as refused:
        load_model_checkpoint(path)
    for message in (str(caught.value), str(refused.value)):
        assert "weights_only=False" not in message and "Re-running" not in message and "will likely succeed" not in message
    assert "UNPICKLED-ARBITRARY-CODE" not in capfd.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04broken"])
def test_a_file_that_is_no_torch_file_is_unreadable_not_unsafe(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError):
        load_weights_only(path)
    with pytest.raises(ModelCheckpointError, match="could not be read"):
        load_model_checkpoint(path)


def test_plain_tensors_load(tmp_path):
    torch.save({"w": torch.arange(3), "n": 2, "s": "x"}, tmp_path / "ok.pt")
    data = load_weights_only(tmp_path / "ok.pt")
    assert data["n"] == 2 and data["s"] == "x" and torch.equal(data["w"], torch.arange(3))
