"""What the inference benchmarks share: the network they time (a trained run's, or an untrained one)."""

from __future__ import annotations

from pathlib import Path

import torch

from medseg.config.schema import PipelineConfig
from medseg.models.checkpoint import load_checkpoint, network_from_checkpoint, resolve_checkpoint


def benchmark_network(cfg: PipelineConfig, model: Path | None, runs: str) -> torch.nn.Module:
    """The network of ``model`` (a run folder or checkpoint), else of the newest ``best.pt`` matching ``runs``
    (a glob), else an untrained one of the pipeline's architecture (seed 0); says which on stdout."""
    if model is not None:
        checkpoint = resolve_checkpoint(model)
    else:
        found = sorted(Path().glob(runs), key=lambda p: p.stat().st_mtime)
        checkpoint = found[-1] if found else None
    if checkpoint is not None:
        print(f"network: {checkpoint}")
        return network_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    from medseg.models.registry import build_network

    torch.manual_seed(0)
    m = cfg.model
    print(f"network: untrained (nothing matches {runs}; mask agreement is then less telling)")
    return build_network(m.name, cfg.spatial_dims, m.in_channels, m.out_channels, m.args).eval()
