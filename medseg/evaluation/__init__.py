"""The evaluate stage (:mod:`.evaluate`) and the per-case metrics it and validation use (:mod:`.metrics`)."""
