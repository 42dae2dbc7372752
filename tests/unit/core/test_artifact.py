"""core/artifact.py: the one Preprocess that checkpoints, exports, predict and the slim server all read."""

from __future__ import annotations

import pytest

from imgclf.core.artifact import Preprocess
from imgclf.core.errors import CheckpointError

GOOD = {"img_size": 32, "resize": 36, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "interpolation": "bicubic"}


def test_reads_what_it_writes_and_what_older_files_hold():
    p = Preprocess(**GOOD)
    assert Preprocess.from_dict(p.to_dict()) == p
    assert Preprocess.from_dict(p.to_dict(), "x.onnx") == p
    old = Preprocess.from_dict({k: v for k, v in GOOD.items() if k != "interpolation"})
    assert old.interpolation == "bilinear"  # files from before it was saved
    # numbers as JSON or an older writer may hold them: whole sizes and float statistics, as the slim server read them
    loose = Preprocess.from_dict({**GOOD, "img_size": 32.0, "resize": "36", "mean": (0, 0.5, 1)})
    assert (loose.img_size, loose.resize, loose.mean) == (32, 36, [0.0, 0.5, 1.0])
    assert all(type(v) is float for v in loose.mean + loose.std)


@pytest.mark.parametrize("path", [None, "x.onnx"])
def test_an_unknown_interpolation_is_one_message_for_every_reader(path):
    with pytest.raises(CheckpointError) as e:
        Preprocess.from_dict({**GOOD, "interpolation": "lanczos"}, path)
    assert str(e.value) == (
        "preprocessing in this file: interpolation 'lanczos' is not one of nearest, bilinear, bicubic "
        "(written by a newer imgclf?)"
    )


def test_a_missing_or_malformed_field_names_the_file_or_is_left_to_the_caller():
    """With the file's path (the slim server): its message. Without (runtime, checkpoints): the KeyError,
    TypeError or ValueError, which runtime words as "incomplete imgclf metadata (missing ...)"."""
    with pytest.raises(CheckpointError, match=r"^'m.onnx' has incomplete imgclf metadata \(preprocessing: 'resize'\)"):
        Preprocess.from_dict({"img_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "m.onnx")
    with pytest.raises(CheckpointError, match="incomplete imgclf metadata"):
        Preprocess.from_dict({**GOOD, "mean": "abc"}, "m.onnx")
    with pytest.raises(KeyError):
        Preprocess.from_dict({"img_size": 32})
    with pytest.raises(TypeError):
        Preprocess.from_dict({**GOOD, "std": None})
    with pytest.raises(ValueError):
        Preprocess.from_dict({**GOOD, "img_size": "big"})


@pytest.mark.parametrize(
    "bad",
    [{"mean": [0.5, 0.5]}, {"std": [0.5, 0.0, 0.5]}, {"img_size": 0}, {"resize": -1}, {"std": [0.5] * 4}],
)
def test_unusable_values_are_refused(bad):
    """Three means, three non-zero stds, sizes of at least a pixel: the slim server's checks, now everyone's."""
    with pytest.raises(CheckpointError, match=r"^'m.onnx' has invalid preprocessing \{.*\}: export it again$"):
        Preprocess.from_dict({**GOOD, **bad}, "m.onnx")
    with pytest.raises(CheckpointError, match="preprocessing in this file is invalid"):
        Preprocess.from_dict({**GOOD, **bad})
