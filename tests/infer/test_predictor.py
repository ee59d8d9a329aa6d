"""The 2D predictor: masks at the input's own size, per-case isolation, checkpoints that load safely."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medseg.config.schema import PipelineConfig
from medseg.config.settings import inference_settings
from medseg.core.errors import ModelError
from medseg.data.inputs import image_inputs
from medseg.infer.inferers import mirrored_probabilities
from medseg.infer.predictor import Predictor
from medseg.models.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint, save_checkpoint
from medseg.models.registry import build_network
from medseg.outputs.batch import Outputs, predict_records

ARGS = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


@pytest.fixture
def predictor() -> Predictor:
    torch.manual_seed(0)
    cfg = PipelineConfig(name="t", preprocessing={"spatial_size": [32, 32]}, model={"args": ARGS})
    return Predictor(build_network("unet", 2, 3, 1, ARGS), inference_settings(cfg), steps=["largest_component"])


def _image(path: Path, height: int, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_probability_comes_back_at_the_input_size(predictor: Predictor, tmp_path: Path) -> None:
    prob = predictor.probabilities(_image(tmp_path / "a.png", 45, 70))[0]
    assert prob.shape == (45, 70) and prob.dtype == np.float32
    assert prob.min() >= 0.0 and prob.max() <= 1.0


def test_batch_prediction_goes_on_past_a_bad_case(predictor: Predictor, tmp_path: Path) -> None:
    _image(tmp_path / "in" / "good1.png", 40, 50)
    _image(tmp_path / "in" / "good2.jpg", 33, 21)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = predict_records(predictor, image_inputs(tmp_path / "in"), tmp_path / "out", Outputs(max_overlays=1))
    assert report.written == ["good1", "good2"]
    assert list(report.failed) == ["broken"] and "broken.png" in report.failed["broken"]
    assert np.asarray(Image.open(tmp_path / "out" / "masks" / "good2.png")).shape == (33, 21)
    assert sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir()) == ["good1.png"]
    assert not list((tmp_path / "out").rglob("*.tmp*")), "no temporary files left behind"


def test_mirror_tta_is_flip_invariant() -> None:
    torch.manual_seed(0)
    network = build_network("unet", 2, 3, 1, ARGS).eval()
    batch = torch.rand(1, 3, 16, 16)
    with torch.inference_mode():
        plain = mirrored_probabilities(network, batch, tta=True)
        flipped = mirrored_probabilities(network, batch.flip(3), tta=True)
    torch.testing.assert_close(plain, flipped.flip(3), atol=1e-5, rtol=1e-4)


def test_checkpoint_round_trip_and_bad_checkpoints(tmp_path: Path) -> None:
    network = build_network("unet", 2, 3, 1, ARGS)
    spec = {"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1, "args": ARGS}
    save_checkpoint(tmp_path / "model" / "best.pt", {"state_dict": network.state_dict(), "network": spec})
    path = resolve_checkpoint(tmp_path)
    assert path == tmp_path / "model" / "best.pt"
    rebuilt = network_from_checkpoint(load_checkpoint(path), path)
    for key, value in network.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelError, match="truncated.pt: not a readable medseg checkpoint"):
        load_checkpoint(truncated)
    other = dict(spec, args={"channels": [8, 16], "strides": [2], "num_res_units": 0})
    save_checkpoint(tmp_path / "other.pt", {"state_dict": network.state_dict(), "network": other})
    with pytest.raises(ModelError, match="other.pt: weights do not fit network unet"):
        network_from_checkpoint(load_checkpoint(tmp_path / "other.pt"), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="no checkpoint found"):
        resolve_checkpoint(tmp_path / "missing")


def test_checkpoints_cannot_run_code(tmp_path: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    torch.save({"state_dict": {}, "network": {}, "payload": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="evil.pt"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
