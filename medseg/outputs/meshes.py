"""Surface meshes of label maps in world coordinates: scikit-image marching cubes on each label, vertices mapped
through the scan's affine (RAS mm), then to LPS (3D Slicer's convention) unless asked for RAS; written with trimesh
(STL, OBJ or PLY)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.core.atomic import atomic_write_bytes

MESH_FORMATS = ("stl", "obj", "ply")
MESH_SPACES = ("lps", "ras")


def label_mesh(mask: np.ndarray, affine: np.ndarray, space: str = "lps") -> tuple[np.ndarray, np.ndarray]:
    """Vertices (world mm) and faces of the surface around ``mask``'s voxels (the iso-surface halfway between
    voxel centres inside and outside), outward-facing."""
    from skimage.measure import marching_cubes

    padded = np.pad(mask.astype(np.float32), 1)  # closed surfaces where the mask touches the border
    vertices, faces, _, _ = marching_cubes(padded, level=0.5)
    vertices = vertices - 1.0  # back to the unpadded voxel indices
    world = vertices @ affine[:3, :3].T + affine[:3, 3]
    if space == "lps":
        world[:, :2] *= -1.0
    if np.linalg.det(affine[:3, :3]) > 0:  # marching cubes winds faces for index space; a proper map keeps the
        faces = faces[:, ::-1]  # winding inward: flip to face outward (an improper, mirroring affine already does)
    return world, faces


def write_mesh(mask: np.ndarray, affine: np.ndarray, output: Path, space: str = "lps") -> Path:
    """Write the surface of ``mask`` as ``output`` (format from its ending: .stl, .obj or .ply)."""
    import trimesh

    vertices, faces = label_mesh(mask, affine, space)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    data = mesh.export(file_type=output.suffix.lstrip(".").lower())
    atomic_write_bytes(output, data if isinstance(data, bytes) else data.encode("utf-8"))
    return output
