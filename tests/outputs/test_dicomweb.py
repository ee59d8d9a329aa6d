"""The hospital round trip against a real Orthanc: a CT series written by the test (uncompressed, every UID set) is
uploaded, found by QIDO-RS, retrieved by WADO-RS, segmented, and its DICOM-SEG (and RTSTRUCT) stored back by STOW-RS,
then read back from Orthanc and checked against the phantom's mask; a second run skips the series, another model
does not; and the faults: no PACS, wrong credentials, a series deleted mid-batch, a STOW rejection by a Lua filter."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg.cli.app import app
from medseg.config.schema import PipelineConfig
from medseg.imageio.label_maps import SUFFIXES
from medseg.infer.predictor import Predictor
from medseg.outputs.dicomweb import DicomwebSource, predict_dicomweb
from medseg.outputs.pacs import Pacs
from medseg.outputs.settings import Outputs
from tests.helpers.models import TINY_UNET_ARGS as ARGS
from tests.helpers.models import ct_threshold_predictor, tiny_unet_checkpoint
from tests.helpers.orthanc import (
    STUDY_UID,
    Orthanc,
    free_port,
    phantom_volume,
    require_orthanc,
    running_orthanc,
    write_ct_series,
)

SERIES_A, SERIES_B = f"{STUDY_UID}.10", f"{STUDY_UID}.20"
DICOM_FORMATS = ("dicom-seg", "rtstruct") if "rtstruct" in SUFFIXES else ("dicom-seg",)
REJECT_SEG = 'function ReceivedInstanceFilter(dicom, origin, info)\n  return dicom.Modality ~= "SEG"\nend\n'

pytest.importorskip("dicomweb_client", reason="the pacs extra (dicomweb-client) is not installed")


def threshold_predictor(threshold: float = 0.4) -> Predictor:
    """Exact masks: HU -160..240 -> 0..1, the 150 HU sphere (0.775) above the threshold, -500 HU below."""
    return ct_threshold_predictor({1: {"name": "sphere", "color": [220, 40, 40]}}, threshold)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny seeded 3D UNet (random weights) for the command-line cases."""
    return tiny_unet_checkpoint(tmp_path_factory.mktemp("model") / "best.pt", "pacs")


def upload_study(server: Orthanc, folder: Path, slices: tuple[int, int] = (12, 12)) -> np.ndarray:
    """Two CT series of the phantom in one study (A, B); the phantom's mask."""
    volume, mask = phantom_volume()
    for uid, count, number in ((SERIES_A, slices[0], 1), (SERIES_B, slices[1], 2)):
        files = write_ct_series(folder / uid, volume[:, :, :count], uid, series_number=number)
        server.upload(files)
    return mask


def summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_back(server: Orthanc, modality: str) -> list:
    """The study's instances of ``modality``, retrieved from Orthanc."""
    pacs = Pacs(server.url)
    found = pacs.client.search_for_instances(STUDY_UID, search_filters={"Modality": modality})
    return [
        pacs.client.retrieve_instance(STUDY_UID, item["0020000E"]["Value"][0], item["00080018"]["Value"][0])
        for item in found
    ]


def rasterised(structure, shape: tuple[int, int, int]) -> np.ndarray:
    """The RTSTRUCT's first ROI drawn back onto the phantom's grid (x, y, z); contours inside contours are holes."""
    from skimage.draw import polygon

    drawn = np.zeros(shape, dtype=bool)
    for contour in structure.ROIContourSequence[0].ContourSequence:
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        k = int(contour.ContourImageSequence[0].ReferencedSOPInstanceUID.rsplit(".", 1)[1]) - 1
        columns, rows = (points[:, 0] + 25.0) / 0.8, (points[:, 1] + 20.0) / 0.8  # patient mm -> pixel indices
        inside = np.zeros(shape[:2], dtype=bool)
        inside[polygon(columns, rows, shape[:2])] = True
        drawn[:, :, k] ^= inside
    return drawn


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.astype(bool).sum() + b.astype(bool).sum())


def test_round_trip_stores_seg_that_matches_the_mask_then_skips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import highdicom as hd

    monkeypatch.setattr("medseg.outputs.pacs.PAGE", 1)  # QIDO-RS paging: one series per request

    with running_orthanc(tmp_path / "orthanc") as server:
        mask = upload_study(server, tmp_path / "ct")
        source = DicomwebSource(server.url, study=STUDY_UID, store=True)
        out = tmp_path / "out"
        report = predict_dicomweb(threshold_predictor(), source, out, Outputs(formats=(*DICOM_FORMATS, "nifti")))
        assert sorted(report.written) == ["phantom1_20260101_1", "phantom1_20260101_2"], report.failed
        rows = summary(out)
        assert {r["series_uid"] for r in rows} == {SERIES_A, SERIES_B}
        assert all(r["status"] == "ok" and "failed" not in r["stored"] for r in rows), rows

        segs = read_back(server, "SEG")
        assert len(segs) == 2
        for dataset in segs:
            seg = hd.seg.Segmentation.from_dataset(dataset)
            assert seg.StudyInstanceUID == STUDY_UID
            referenced = seg.ReferencedSeriesSequence[0]
            assert referenced.SeriesInstanceUID in (SERIES_A, SERIES_B)
            assert seg.FrameOfReferenceUID == f"{STUDY_UID}.0"
            for item in referenced.ReferencedInstanceSequence:  # every frame = the mask slice of its instance
                uid = item.ReferencedSOPInstanceUID
                frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
                k = int(uid.rsplit(".", 1)[1]) - 1
                np.testing.assert_array_equal(frame[0, :, :, 0], mask[:, :, k].T)
        if "rtstruct" in DICOM_FORMATS:
            structures = read_back(server, "RTSTRUCT")
            assert len(structures) == 2
            assert structures[0].StructureSetROISequence[0].ROIName == "sphere"
            for structure in structures:
                frame = structure.ReferencedFrameOfReferenceSequence[0]
                assert frame.FrameOfReferenceUID == f"{STUDY_UID}.0"
                assert frame.RTReferencedStudySequence[0].ReferencedSOPInstanceUID == STUDY_UID
                assert dice(rasterised(structure, mask.shape), mask) >= 0.97

        again = predict_dicomweb(threshold_predictor(), source, out, Outputs(formats=DICOM_FORMATS))
        assert sorted(again.skipped) == sorted(report.written) and not again.written  # in the PACS: skipped
        other = predict_dicomweb(threshold_predictor(0.3), source, tmp_path / "other", Outputs(formats=DICOM_FORMATS))
        assert len(other.written) == 2 and not other.skipped  # another model's result is no reason to skip
        assert len(read_back(server, "SEG")) == 4


def test_command_line_round_trip_with_a_network_and_a_series_deleted_mid_batch(
    tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import highdicom as hd
    import nibabel as nib

    with running_orthanc(tmp_path / "orthanc") as server:
        upload_study(server, tmp_path / "ct")
        search = Pacs.search_series

        def search_then_delete(self: Pacs, *args: object, **kwargs: object) -> list:
            found = search(self, *args, **kwargs)
            server.delete_series(SERIES_B)  # gone between the query and the retrieval
            return found

        monkeypatch.setattr(Pacs, "search_series", search_then_delete)
        out = tmp_path / "out"
        argv = ["predict", "-m", str(checkpoint), "--dicomweb", server.url, "--study", STUDY_UID, "-o", str(out)]
        result = CliRunner().invoke(app, [*argv, "--format", "dicom-seg,nifti", "--store"])
        assert result.exit_code == 1, result.output
        rows = {r["series_uid"]: r for r in summary(out)}
        assert rows[SERIES_A]["status"] == "ok" and rows[SERIES_A]["stored"] == "phantom1_20260101_1.dcm: stored"
        assert rows[SERIES_B]["status"] == "failed" and "404" in rows[SERIES_B]["message"]
        seg = hd.seg.Segmentation.from_dataset(read_back(server, "SEG")[0])
        labels = np.asarray(nib.load(out / "masks" / "phantom1_20260101_1.nii.gz").dataobj)
        for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
            uid = item.ReferencedSOPInstanceUID
            frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
            np.testing.assert_array_equal(frame[0, :, :, 0], labels[:, :, int(uid.rsplit(".", 1)[1]) - 1].T)


def test_a_stow_rejection_is_reported_per_instance_and_a_rerun_stores_it(tmp_path: Path) -> None:
    server = Orthanc(tmp_path / "orthanc", require_orthanc())
    out = tmp_path / "out"
    try:
        server.start(lua=REJECT_SEG)
        upload_study(server, tmp_path / "ct", slices=(12, 2))
        source = DicomwebSource(server.url, study=STUDY_UID, store=True)
        report = predict_dicomweb(threshold_predictor(), source, out, Outputs(formats=("dicom-seg",)))
        assert list(report.failed) == ["phantom1_20260101_1"]
        rows = {r["series_uid"]: r for r in summary(out)}
        assert rows[SERIES_A]["stored"].startswith("phantom1_20260101_1.dcm: failed: ")
        assert rows[SERIES_B]["status"] == "skipped" and "not a volume" in rows[SERIES_B]["message"]
        assert (out / "masks" / "phantom1_20260101_1.dcm").is_file()  # the local copy is kept
        server.stop(graceful=True)
        server.start()  # the filter lifted, the same storage
        rerun = predict_dicomweb(threshold_predictor(), source, out, Outputs(formats=("dicom-seg",)))
        assert rerun.written == ["phantom1_20260101_1"] and not rerun.failed
        row = {r["series_uid"]: r for r in summary(out)}[SERIES_A]
        assert row["stored"] == "phantom1_20260101_1.dcm: stored" and row["message"] == "segmented before (local copy)"
        assert len(read_back(server, "SEG")) == 1
    finally:
        server.stop()


def test_wrong_credentials_give_one_line_401(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_orthanc(tmp_path / "orthanc", users={"alice": "right"}) as server:
        monkeypatch.setenv("MEDSEG_DICOMWEB_USER", "alice")
        monkeypatch.setenv("MEDSEG_DICOMWEB_PASSWORD", "wrong-password")
        argv = ["predict", "-m", str(checkpoint), "--dicomweb", server.url, "--study", STUDY_UID, "-o", str(tmp_path)]
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: --dicomweb {server.url}: 401 Unauthorized: check MEDSEG_DICOMWEB_USER/MEDSEG_DICOMWEB_PASSWORD, "
        "MEDSEG_DICOMWEB_TOKEN or ~/.netrc"
    )
    assert "wrong-password" not in result.output


def test_a_study_with_nothing_readable_is_one_line(tmp_path: Path, checkpoint: Path) -> None:
    with running_orthanc(tmp_path / "orthanc") as server:
        volume, _ = phantom_volume()
        server.upload(write_ct_series(tmp_path / "ct", volume[:, :, :2], SERIES_A))
        argv = ["predict", "-m", str(checkpoint), "--dicomweb", server.url, "--study", STUDY_UID, "-o", str(tmp_path)]
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: --study {STUDY_UID}: no series medseg can read: "
        f"{SERIES_A} (2 instance(s): not a volume (a localizer?))"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--dicomweb", "ftp://pacs/dicom-web", "--study", "1.2"],
            "--dicomweb ftp://pacs/dicom-web: not an http(s) URL",
        ),
        (["-i", "scans", "--store"], "--store: needs --dicomweb URL"),
        (["--dicomweb", "http://u:p@pacs/dicom-web", "--study", "1.2"], "--dicomweb pacs: credentials in the URL"),
        (["--dicomweb", "http://pacs/dicom-web"], "--dicomweb: name what to segment with --study UID"),
        (["--dicomweb", "http://pacs/dicom-web", "--query", "Modality"], "--query Modality: expected KEY=VALUE"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["predict", "-m", "unused", "-o", str(tmp_path / "out"), *options])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and message in result.output


def test_no_pacs_running_is_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    result = CliRunner().invoke(
        app, ["predict", "-m", "unused", "--dicomweb", url, "--study", "1.2.3", "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: --dicomweb {url}: cannot connect (")
    assert line.endswith("is the PACS running?")


def test_the_pipeline_yaml_and_the_public_api_name_the_same_source() -> None:
    import medseg
    from medseg.config.settings import dicomweb_source

    section = {"url": "https://pacs.example.org/dicom-web", "query": {"Modality": "CT"}, "store": True}
    cfg = PipelineConfig(name="pacs", spatial_dims=3, prediction={"dicomweb": section})
    assert dicomweb_source(cfg) == medseg.DicomwebSource(
        "https://pacs.example.org/dicom-web", query=(("Modality", "CT"),), store=True
    )
    assert dicomweb_source(PipelineConfig(name="local")) is None
    assert medseg.predict_dicomweb is predict_dicomweb
    for bad in ({"url": "ftp://pacs", "study": "1.2"}, {"url": "https://pacs/dicom-web"}):
        with pytest.raises(ValueError):
            PipelineConfig(name="pacs", spatial_dims=3, prediction={"dicomweb": bad})


def test_a_missing_ca_bundle_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDSEG_DICOMWEB_CA_BUNDLE", str(tmp_path / "missing.pem"))
    argv = ["predict", "-m", "unused", "--dicomweb", "https://pacs/dicom-web", "--study", "1.2", "-o", str(tmp_path)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: MEDSEG_DICOMWEB_CA_BUNDLE (prediction.dicomweb.ca_bundle) {tmp_path / 'missing.pem'}: no such file"
    )


def test_the_pipeline_predict_stage_reads_and_stores_through_prediction_dicomweb(
    tmp_path: Path, checkpoint: Path
) -> None:
    from medseg.pipeline.run import run_pipeline

    with running_orthanc(tmp_path / "orthanc") as server:
        upload_study(server, tmp_path / "ct")
        cfg = PipelineConfig(
            name="pacs",
            spatial_dims=3,
            stages=["predict"],
            output_root=tmp_path / "runs",
            model={"in_channels": 1, "args": ARGS, "checkpoint": str(checkpoint)},
            preprocessing={"patch_size": [16, 16, 16], "intensity": {"kind": "ct"}},
            inference={"backend": "torch"},
            postprocessing={"mode": "off"},
            prediction={
                "formats": ["dicom-seg"],
                "dicomweb": {"url": server.url, "study": STUDY_UID, "store": True},
            },
            tracking={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        )
        result = run_pipeline(cfg, run_name="pacs")
        rows = {r["series_uid"]: r for r in summary(result.run_dir / "predictions")}
        assert {rows[s]["status"] for s in (SERIES_A, SERIES_B)} == {"ok"}
        assert len(read_back(server, "SEG")) == 2  # one DICOM-SEG per series, stored back into the study


def test_channel_rules_choose_one_series_per_channel_in_each_study_and_name_what_matched_none_or_several() -> None:
    from medseg.core.errors import ConfigError
    from medseg.outputs.dicomweb import _cases
    from medseg.outputs.pacs import SeriesInfo

    def series(study: str, uid: str, description: str) -> SeriesInfo:
        return SeriesInfo(study, uid, "MR", description, uid[-1], "p" + study, "20260101")

    found = [
        series("1", "1.1", "AX FLAIR"),
        series("1", "1.2", "T1 post contrast"),
        series("2", "2.1", "flair"),
        series("2", "2.2", "flair repeat"),
    ]
    rules = ("SeriesDescription=*flair*", "SeriesDescription=*t1*post*")
    first, second = _cases(found, 2, rules, [])
    assert [s.series_uid for s in first.series] == ["1.1", "1.2"] and first.problem is None
    assert second.problem == (
        "channel rule SeriesDescription=*flair* matched 2 series in study 2; "
        "channel rule SeriesDescription=*t1*post* matched 0 series in study 2"
    )
    with pytest.raises(ConfigError, match="the model takes 2 channels; give one KEY=PATTERN rule per channel"):
        _cases(found, 2, rules[:1], [])
    with pytest.raises(ConfigError, match="--channel PatientName: choose one of SeriesDescription, Modality"):
        _cases(found, 2, ("PatientName=x", "Modality=MR"), [])


def test_a_pacs_answering_503_is_asked_again_with_backoff(tmp_path: Path) -> None:
    """QIDO-RS against a local server that fails twice with 503 Service Unavailable, then answers."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls: list[str] = []

    class Flaky(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            calls.append(self.path)
            if len(calls) <= 2:
                self.send_response(503)
                self.end_headers()
                return
            body = json.dumps(
                [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "0020000E": {"vr": "UI", "Value": ["1.2.3.4"]}}]
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        found = Pacs(f"http://127.0.0.1:{server.server_address[1]}/dicom-web").search_series(study="1.2.3")
    finally:
        server.shutdown()
        server.server_close()
    assert [s.series_uid for s in found] == ["1.2.3.4"] and len(calls) == 3
