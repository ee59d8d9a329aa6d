"""The serving model behind MLflow's scoring server (``mlflow models serve --env-manager local``): a PNG to a tiny 2D
model and a NIfTI to a tiny 3D model give ``medseg predict``'s masks; junk gets one-line reasons, never an echo of
its bytes, and the next good request is still served; medseg is imported from the model's own folder."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from typer.testing import CliRunner

from medseg.config.loading import load_config
from medseg.tracking.serving import PATHS_UNDER_ENV, file_suffix, input_items, unpacked
from tests.helpers.data import AFFINE, phantom_case, tiny_overrides, write_dicom_series
from tests.helpers.paths import REPO

MLFLOW = Path(sys.executable).parent / "mlflow"
STARTUP_TIMEOUT_S = 180


# ---------------------------------------------------------------- fast: the parts that need no server


def test_inputs_arrive_as_records_in_every_request_form() -> None:
    import pandas as pd

    record = {"name": "a.png", "data": "eA=="}
    assert input_items(pd.DataFrame([record])) == [record]
    assert input_items([record]) == [record]
    assert input_items(np.array([record], dtype=object)) == [record]
    assert input_items([{"name": np.array("a.png"), "data": np.array("eA==")}]) == [record]  # MLflow's `inputs`
    assert input_items({"name": ["a.png"], "data": ["eA=="]}) == [record]
    assert input_items(record) == [record]


def test_a_file_without_a_name_is_known_by_its_bytes() -> None:
    from medseg.tracking.serving import ServingInputError

    assert file_suffix("Scan.NII.GZ", b"") == ".nii.gz"
    assert file_suffix(None, b"\x89PNG\r\n") == ".png"
    assert file_suffix(None, b"\x1f\x8b\x08") == ".nii.gz"
    assert file_suffix(None, b"NRRD0004") == ".nrrd"
    with pytest.raises(ServingInputError, match="no known format"):
        file_suffix(None, b"hello")
    with pytest.raises(ServingInputError, match="not a format this endpoint reads"):
        file_suffix("notes.txt", b"hello")


def test_a_zip_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    from medseg.tracking.serving import ServingInputError

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.dcm", b"x")
    with pytest.raises(ServingInputError, match="outside its folder"):
        unpacked(buffer.getvalue(), tmp_path / "in")
    assert not (tmp_path / "escape.dcm").exists()
    with pytest.raises(ServingInputError, match="not a readable zip"):
        unpacked(b"PK\x03\x04 broken", tmp_path / "in2")


def test_path_inputs_are_off_unless_allowed_and_stay_in_their_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medseg.tracking.serving import ServingInputError, allowed_folder, checked_path

    allowed, outside = tmp_path / "allowed", tmp_path / "secret.nii.gz"
    allowed.mkdir()
    outside.write_bytes(b"x")
    (allowed / "scan.nii.gz").write_bytes(b"x")
    (allowed / "link.nii.gz").symlink_to(outside)
    monkeypatch.delenv(PATHS_UNDER_ENV, raising=False)
    assert allowed_folder() is None
    with pytest.raises(ServingInputError, match="path inputs are off"):
        checked_path(str(allowed / "scan.nii.gz"), None)
    monkeypatch.setenv(PATHS_UNDER_ENV, str(allowed))
    under = allowed_folder()
    assert checked_path("scan.nii.gz", under) == (allowed / "scan.nii.gz").resolve()
    for escape in (str(outside), "../secret.nii.gz", "link.nii.gz"):
        with pytest.raises(ServingInputError, match="outside the folder") as caught:
            checked_path(escape, under)
        assert "secret" not in str(caught.value)


def test_reasons_are_one_line_without_the_temporary_folder(tmp_path: Path) -> None:
    from medseg.tracking.serving import _scrubbed

    reason = f"{tmp_path}/in/input.nii.gz: cannot read\n(File {tmp_path}/in/input.nii.gz is not a gzip file)"
    assert _scrubbed(reason, tmp_path, "ct.nii.gz") == "ct.nii.gz: cannot read (File ct.nii.gz is not a gzip file)"
    assert len(_scrubbed("x" * 1000, tmp_path, "a")) == 300


def test_the_serving_model_is_logged_beside_the_pytorch_model(tmp_path: Path) -> None:
    from medseg.tracking.serving import log_serving_model
    from medseg.tracking.tracker import Tracker, installable_requirements, medseg_code_path

    (tmp_path / "best.pt").write_bytes(b"weights")
    tracker = Tracker()
    with tracker.run("p"):
        assert log_serving_model(tracker, [tmp_path / "best.pt"], "lesion") == "runs:/memory-0/serving"
    logged = tracker.runs[0]["pyfunc_models"]["serving"]
    assert logged["registered_name"] == "lesion-serving" and logged["code"].endswith("pyfunc_model.py")
    names = [r.split("==")[0].lower() for r in installable_requirements()]
    assert "medseg" not in names and {"torch", "monai", "mlflow"} <= set(names)
    assert all("==" in r for r in installable_requirements())
    assert (Path(medseg_code_path()) / "tracking" / "pyfunc_model.py").is_file()


# ---------------------------------------------------------------- slow: two tiny models behind two real servers


@dataclass
class Served:
    """A model behind a running ``mlflow models serve``: its run folder, URL and log file."""

    run_dir: Path
    url: str
    log: Path
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(run_dir: Path, uri: str, store: str, allowed: Path, log: Path) -> Served:
    port = _free_port()
    path = os.pathsep.join([str(MLFLOW.parent), os.environ.get("PATH", "")])  # uvicorn beside mlflow, as activated
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": store, PATHS_UNDER_ENV: str(allowed)}
    command = [str(MLFLOW), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1"]
    command += ["-p", str(port), "-t", "120", "-w", "1"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=log.parent, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Served(run_dir, f"http://127.0.0.1:{port}", log, process)


def _wait(served: Served) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise AssertionError(f"mlflow models serve exited: {served.log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{served.url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no /ping after {STARTUP_TIMEOUT_S} s: {served.log.read_text(errors='replace')[-3000:]}")


def _stop(served: Served) -> None:
    if served.process.poll() is None:
        os.killpg(served.process.pid, signal.SIGTERM)
        try:
            served.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(served.process.pid, signal.SIGKILL)
            served.process.wait(timeout=15)


def _post(served: Served, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        f"{served.url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _answers(served: Served, records: list[dict], form: str = "dataframe_records") -> list[dict]:
    status, text = _post(served, {form: records})
    assert status == 200, text
    return json.loads(text)["predictions"]


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _train_2d(root: Path) -> tuple[Path, str, str]:
    from medseg.data.synthetic import generate_dermoscopy_dataset
    from medseg.pipeline.run import run_pipeline

    dataset = generate_dermoscopy_dataset(root / "tiny", num_cases=12, image_size=(64, 96), seed=3)
    overrides = [*tiny_overrides(root, dataset), "stages=[train]", "inference.backend=torch"]
    cfg = load_config(REPO / "pipelines" / "skin_lesion.yaml", overrides)
    # Otsu: a 2D model whose masks are not empty after seconds of fitting (a 2-epoch UNet's are); the served path is
    # the same for networks, which the 3D model covers
    cfg = cfg.with_values({"model.name": "otsu", "model.args": {}})
    result = run_pipeline(cfg, run_name="serve2d")
    return result.run_dir, f"runs:/{result.run_id}/serving", cfg.tracking.uri


def _train_3d(root: Path) -> tuple[Path, str, str]:
    from medseg.pipeline.run import run_pipeline

    dataset = root / "phantoms"
    rng = np.random.default_rng(0)
    for folder in ("imagesTr", "labelsTr"):
        (dataset / folder).mkdir(parents=True)
    for index in range(5):
        flair, _, label = phantom_case(rng)
        nib.save(nib.Nifti1Image(flair, AFFINE), dataset / "imagesTr" / f"case{index}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), dataset / "labelsTr" / f"case{index}.nii.gz")
    overrides = [
        f"data.root={root}",
        "data.dataset_dir=phantoms",
        "data.modalities=[imagesTr]",
        "model.in_channels=1",
        f"data.split.file={root / 'splits.json'}",
        f"output_root={root / 'runs'}",
        f"tracking.uri=sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        "preprocessing.patch_size=[16, 16, 16]",
        "model.args.channels=[8, 16]",
        "model.args.strides=[2]",
        "training.epochs=1",
        "training.samples_per_volume=2",
        "training.max_minutes=null",
        "schedule.length=epochs",
        "training.bf16=true",
        "inference.backend=torch",
        "stages=[train]",
    ]
    cfg = load_config(REPO / "pipelines" / "brain_tumor_mri.yaml", overrides)
    result = run_pipeline(cfg, run_name="serve3d")
    return result.run_dir, f"runs:/{result.run_id}/serving", cfg.tracking.uri


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    """A tiny 2D and a tiny 3D model, each behind its own scoring server (the 2D one starts while the 3D trains);
    both stopped at the end, whatever happens."""
    root = tmp_path_factory.mktemp("serving")
    allowed = root / "allowed"
    allowed.mkdir()
    started: dict[str, Served] = {}
    try:
        run_dir, uri, store = _train_2d(root / "2d")
        started["2d"] = _start(run_dir, uri, store, allowed, root / "2d" / "server.log")
        run_dir, uri, store = _train_3d(root / "3d")
        started["3d"] = _start(run_dir, uri, store, allowed, root / "3d" / "server.log")
        for served in started.values():
            _wait(served)
        yield started
    finally:
        for served in started.values():
            _stop(served)


def _predicted(run_dir: Path, image: Path, out: Path) -> Path:
    from medseg.cli.app import app

    done = CliRunner().invoke(app, ["predict", "-m", str(run_dir), "-i", str(image), "-o", str(out)])
    assert done.exit_code == 0, done.output
    return next((out / "masks").iterdir())


@pytest.mark.slow
def test_served_masks_are_medseg_predicts_and_junk_gets_reasons(servers: dict[str, Served], tmp_path: Path) -> None:
    two, three = servers["2d"], servers["3d"]
    png = next((two.run_dir.parent.parent.parent / "tiny" / "images").glob("*.png"))
    scan = tmp_path / "scan.nii.gz"
    flair, _, _ = phantom_case(np.random.default_rng(7))
    nib.save(nib.Nifti1Image(flair, AFFINE), scan)

    # a PNG to the 2D model (both request forms), a NIfTI to the 3D model: medseg predict's masks
    for form in ("dataframe_records", "inputs"):
        (answer,) = _answers(two, [{"name": png.name, "data": _b64(png)}], form)
        assert answer["status"] == "ok" and answer["mask_suffix"] == ".png", answer
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["mask"]))))
        expected = np.asarray(Image.open(_predicted(two.run_dir, png, tmp_path / f"predicted2d-{form}")))
        np.testing.assert_array_equal(served, expected)
        assert answer["labels"] == {"1": "lesion"} and answer["voxels"]["lesion"] == int((expected > 0).sum()) > 0
        assert answer["ml"]["lesion"] is None  # a photograph has no spacing

    (answer,) = _answers(three, [{"name": scan.name, "data": _b64(scan)}])
    assert answer["status"] == "ok" and answer["mask_suffix"] == ".nii.gz", answer
    served_file = tmp_path / "served.nii.gz"
    served_file.write_bytes(base64.b64decode(answer["mask"]))
    expected = nib.load(_predicted(three.run_dir, scan, tmp_path / "predicted3d"))
    served = nib.load(served_file)
    np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(expected.dataobj))
    np.testing.assert_allclose(served.affine, AFFINE, atol=1e-5)
    voxels = int((np.asarray(expected.dataobj) > 0).sum())
    assert 0 < voxels < expected.shape[0] * expected.shape[1] * expected.shape[2]
    assert answer["voxels"] == {"whole_tumor": voxels}
    assert answer["ml"]["whole_tumor"] == pytest.approx(voxels * 1.2 * 1.0 * 1.5 / 1000, abs=1e-3)

    # a zip of one DICOM series: medseg predict's mask of the series folder (NIfTI, the series' geometry)
    series = tmp_path / "series"
    volume = sitk.GetImageFromArray(flair.transpose(2, 1, 0).copy())
    volume.SetSpacing((0.9, 0.9, 1.5))
    write_dicom_series(sitk.Cast(volume * 100, sitk.sitkInt16), series, "1.2.826.0.1.3680043.2.1125.7.2", "slice")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        for path in sorted(series.iterdir()):
            packed.write(path, f"series/{path.name}")
    (answer_dicom,) = _answers(three, [{"name": archive.name, "data": _b64(archive)}])
    assert answer_dicom["status"] == "ok" and answer_dicom["mask_suffix"] == ".nii.gz", answer_dicom
    served_file.write_bytes(base64.b64decode(answer_dicom["mask"]))
    expected_dicom = nib.load(_predicted(three.run_dir, series, tmp_path / "predicted-dicom"))
    np.testing.assert_array_equal(np.asarray(nib.load(served_file).dataobj), np.asarray(expected_dicom.dataobj))
    np.testing.assert_allclose(nib.load(served_file).affine, expected_dicom.affine, atol=1e-5)

    # junk: one-line reasons, no echo of the bytes, and the good input in the same request still served
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(scan.read_bytes())
    inside = servers["3d"].log.parent.parent / "allowed" / "inside.nii.gz"
    inside.write_bytes(scan.read_bytes())
    junk = [
        {"name": "a.nii.gz", "data": "@@ not base64 @@"},
        {"name": "broken.nii.gz", "data": broken},
        {"name": png.name, "data": _b64(png)},
        {"path": str(outside)},
        {"path": "../../" + outside.name},
        {"foo": "bar"},
        {"path": str(inside)},
        {"name": scan.name, "data": _b64(scan)},
    ]
    answers = _answers(three, junk)
    reasons = [a.get("reason") or "" for a in answers]
    assert [a["status"] for a in answers] == ["error"] * 6 + ["ok", "ok"], answers
    assert "not valid base64" in reasons[0]
    assert "broken.nii.gz" in reasons[1]
    assert "2D image, but this model segments 3D scans" in reasons[2]
    assert "outside the folder" in reasons[3] and "outside the folder" in reasons[4]
    assert "base64 in 'data'" in reasons[5]
    for reason in reasons[:6]:
        assert "\n" not in reason and len(reason) <= 300 and "medseg-serving-" not in reason, reason
        assert broken[20:60] not in reason and str(tmp_path) not in reason
    for index in (6, 7):  # the same scan by path and by bytes: the same mask
        served_file.write_bytes(base64.b64decode(answers[index]["mask"]))
        np.testing.assert_array_equal(np.asarray(nib.load(served_file).dataobj), np.asarray(expected.dataobj))
    truncated = urllib.request.Request(
        f"{three.url}/invocations",
        b'{"dataframe_records": [{"data": "' + broken.encode(),
        {"Content-Type": "application/json"},
    )
    # a body that is not JSON: refused by MLflow itself, whose message repeats it to its sender (not into its log)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(truncated, timeout=60)
    status, text = _post(three, {"inputs": "not records"})
    assert status == 200 and "expected records with 'data'" in text
    (again,) = _answers(three, [{"name": scan.name, "data": _b64(scan)}])  # the next request: served as before
    assert again["status"] == "ok" and again["voxels"] == answer["voxels"]

    # nothing of any payload in the server's logs; medseg came from the model's own folder
    for served in (two, three):
        log = served.log.read_text(errors="replace")
        assert broken[20:60] not in log and _b64(png)[200:260] not in log and _b64(scan)[200:260] not in log
        imported = next(line for line in log.splitlines() if "medseg imported from" in line)
        origin = Path(imported.split("medseg imported from ")[1].split(";")[0])
        assert origin.parts[-2:] == ("code", "medseg") and not origin.is_relative_to(REPO), imported
