"""Reading and writing 3D medical images (NIfTI, NRRD, MetaImage, DICOM series) in one convention.

Arrays are in (x, y, z) voxel order with a RAS affine in the metadata, as MONAI's ``NibabelReader`` gives.
"""

from __future__ import annotations

from medseg.imageio.readers import SimpleITKReader, load_volume, reader_for
from medseg.imageio.writers import write_mask_like, write_probability_like

__all__ = ["SimpleITKReader", "load_volume", "reader_for", "write_mask_like", "write_probability_like"]
