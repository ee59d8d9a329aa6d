"""A real Orthanc PACS for the DICOMweb tests: started by the test on free ports with a private storage folder,
DICOMweb on, remote access refused, and always stopped (its whole process group).

Where the ``Orthanc`` binary is absent the tests skip with that reason, except under ``CI=true``, where a missing
Orthanc fails the run (``.ci/run`` installs Debian's ``orthanc`` and ``orthanc-dicomweb``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests

BINARY = "Orthanc"
PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
START_SECONDS = 30.0


def dicomweb_plugin() -> Path | None:
    """Debian's DICOMweb plugin (``dpkg -L orthanc-dicomweb``), or None."""
    for folder in PLUGIN_FOLDERS:
        found = sorted(Path(folder).glob(f"{DICOMWEB_PLUGIN}*")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    return None


def require_orthanc() -> Path:
    """The DICOMweb plugin's path; skip the test (fail under ``CI=true``) when Orthanc or the plugin is missing."""
    plugin = dicomweb_plugin()
    missing = None
    if shutil.which(BINARY) is None:
        missing = "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    elif plugin is None:
        missing = "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}; CI must run the PACS tests")
        pytest.skip(missing)
    assert plugin is not None
    return plugin


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Orthanc:
    """One Orthanc instance over ``folder`` (storage, index, config, log); restartable on the same storage with
    another Lua script or users."""

    folder: Path
    plugin: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The DICOMweb root."""
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, lua: str | None = None, users: dict[str, str] | None = None) -> Orthanc:
        """Start with an optional Lua script (e.g. a ``ReceivedInstanceFilter``) and HTTP users (authentication on
        when given); wait until ``/system`` answers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "medseg-test",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomServerEnabled": False,  # DICOMweb only: no DIMSE port open
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "Plugins": [str(self.plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [],
        }
        if lua is not None:
            script = self.folder / "filter.lua"
            script.write_text(lua, encoding="utf-8")
            config["LuaScripts"] = [str(script)]
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        with (self.folder / "orthanc.log").open("ab") as log:
            self.process = subprocess.Popen(
                [BINARY, str(path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        auth = next(iter(users.items())) if users else None
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_text = (self.folder / "orthanc.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}: {log_text}")
            try:
                if requests.get(f"{self.rest}/system", auth=auth, timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.rest} within {START_SECONDS:.0f} s")

    def stop(self, graceful: bool = False) -> None:
        """Stop the whole process group: SIGKILL (the storage is thrown away), or with ``graceful`` SIGTERM (the
        storage kept for a restart), then SIGKILL after 10 s."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass

    def upload(self, files: list[Path], auth: tuple[str, str] | None = None) -> None:
        """Store DICOM files through the REST API (``POST /instances``)."""
        for path in files:
            response = requests.post(f"{self.rest}/instances", data=path.read_bytes(), auth=auth, timeout=30)
            response.raise_for_status()

    def delete_series(self, series_uid: str) -> None:
        """Delete a series (looked up by its SeriesInstanceUID)."""
        found = requests.post(
            f"{self.rest}/tools/lookup", data=series_uid, timeout=10
        ).json()  # [{"ID": ..., "Type": "Series"}]
        for item in found:
            if item["Type"] == "Series":
                requests.delete(f"{self.rest}/series/{item['ID']}", timeout=10).raise_for_status()

    def instances(self, auth: tuple[str, str] | None = None) -> list[dict]:
        """Every stored instance's main tags (simplified)."""
        ids = requests.get(f"{self.rest}/instances", auth=auth, timeout=10).json()
        return [requests.get(f"{self.rest}/instances/{i}/simplified-tags", auth=auth, timeout=10).json() for i in ids]


@contextmanager
def running_orthanc(folder: Path, lua: str | None = None, users: dict[str, str] | None = None) -> Iterator[Orthanc]:
    """A started Orthanc over ``folder``, always stopped."""
    server = Orthanc(folder, require_orthanc())
    try:
        yield server.start(lua, users)
    finally:
        server.stop()


STUDY_UID = "1.2.826.0.1.3680043.8.498.29.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def phantom_volume(shape: tuple[int, int, int] = (64, 64, 12), radius: float = 14.0) -> tuple[np.ndarray, np.ndarray]:
    """A CT phantom (x, y, z) int16 HU: a 150 HU sphere in -500 HU, and the sphere's mask (uint8)."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    centre = (shape[0] / 2 - 3, shape[1] / 2 + 2, shape[2] / 2)
    spacing = (0.8, 0.8, 2.5)
    distance = np.sqrt(sum(((a - c) * s) ** 2 for a, c, s in zip((x, y, z), centre, spacing, strict=True)))
    mask = (distance <= radius).astype(np.uint8)
    return np.where(mask > 0, 150, -500).astype(np.int16), mask


def write_ct_series(
    folder: Path,
    volume: np.ndarray,
    series_uid: str,
    study_uid: str = STUDY_UID,
    description: str = "CT phantom",
    series_number: int = 1,
    patient_id: str = "PHANTOM1",
) -> list[Path]:
    """A CT series written with pydicom: uncompressed (explicit VR little endian), every UID set, one file per z
    slice of ``volume`` (x, y, z); spacing 0.8 x 0.8 x 2.5 mm, axial."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(volume.shape[2]):
        sop_uid = f"{series_uid}.{k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"ct{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = f"{study_uid}.0"
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = patient_id, "Phantom^One", "20260101", "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        ds.SeriesDescription, ds.Manufacturer = description, "medseg-tests"
        ds.ImagePositionPatient = [-25.0, -20.0, 10.0 + 2.5 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).tobytes()  # rows = y, columns = x
        ds.save_as(ds.filename, enforce_file_format=True)
        paths.append(Path(ds.filename))
    return paths
