"""Dataset layouts: how a dataset folder lists its cases, one module per layout, 2D and 3D together.

Each module holds one :class:`medseg.data.layouts.base.Layout` (``name``, ``spatial_dims``, ``detect``, ``find``);
:mod:`medseg.data.layouts.registry` maps ``data.layout`` names to them. A new layout is one module here and one
entry in ``registry.LAYOUTS``.
"""
