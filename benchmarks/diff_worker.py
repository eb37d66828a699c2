"""One measured diff variant in its own process, so its peak RSS is its own.

Usage: python diff_worker.py MODE BASE FT OUT_JSON
MODE: ours (mechdiff's streaming diff), stream_norms (stream both checkpoints, per-tensor
norms in plain torch), load_whole (load both state dicts whole, then the same norms),
full_svd (torch.linalg.svdvals of every delta), lowrank (torch.svd_lowrank of every delta
with the same k as ours, niter=2, plus the delta's squared Frobenius norm for a noise level).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _stream_norms(base: str, ft: str) -> dict:
    from mechdiff.checkpoint import open_source, pair_sources

    b, f = open_source(base), open_source(ft)
    out = {}
    for pair in pair_sources(b, f).pairs:
        wb = b.get(pair.base_name).float()
        d = f.get(pair.ft_name).float() - wb
        out[pair.name] = float(torch.linalg.vector_norm(d) / torch.linalg.vector_norm(wb))
    return out


def _load_whole(base: str, ft: str) -> dict:
    from safetensors.torch import load_file

    def load(folder: str) -> dict:
        state = {}
        for shard in sorted(Path(folder).glob("*.safetensors")):
            state |= load_file(str(shard))
        return state

    sb, sf = load(base), load(ft)
    return {n: float(torch.linalg.vector_norm(sf[n].float() - sb[n].float()) / torch.linalg.vector_norm(sb[n].float()))
            for n in sb}


def _matrix_deltas(base: str, ft: str):
    """(name, fp32 delta) of every aligned 2-D pair, streamed."""
    from mechdiff.checkpoint import open_source, pair_sources

    b, f = open_source(base), open_source(ft)
    for pair in pair_sources(b, f).pairs:
        if len(pair.base_shape) == 2:
            yield pair.name, f.get(pair.ft_name).float() - b.get(pair.base_name).float()


def _full_svd(base: str, ft: str) -> dict:
    return {name: torch.linalg.svdvals(d).numpy().astype(np.float64).tolist() for name, d in _matrix_deltas(base, ft)}


def _lowrank(base: str, ft: str) -> dict:
    from mechdiff.weightdecomp.spectral import SpectralConfig

    k, out = SpectralConfig().k, {}
    for name, d in _matrix_deltas(base, ft):
        _, s, _ = torch.svd_lowrank(d, q=min(k, *d.shape), niter=2)
        out[name] = {"sv": s.double().tolist(), "frob2": float(d.double().square().sum()), "shape": list(d.shape)}
    return out


def _ours(base: str, ft: str) -> dict:
    from mechdiff.api import diff_checkpoints

    result = diff_checkpoints(base, ft, progress=False)
    return {c.tensor: {"rank": c.rank, "score": c.score, "noise_sigma": c.noise_sigma,
                       "sv": [float(s) for s in (c.singular_values if c.singular_values is not None else [])]}
            for c in result.changes}


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Linux keeps ru_maxrss across exec, so a worker started by
    a big harness process would report the harness's peak; VmHWM belongs to this image."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    mode, base, ft, out = sys.argv[1:5]
    torch.set_num_threads(torch.get_num_threads())
    start = time.perf_counter()
    detail = {"ours": _ours, "stream_norms": _stream_norms, "load_whole": _load_whole, "full_svd": _full_svd,
              "lowrank": _lowrank}[mode](base, ft)
    seconds = time.perf_counter() - start
    peak_mb = _peak_rss_mb()
    Path(out).write_text(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mb": peak_mb, "detail": detail}))


if __name__ == "__main__":
    main()
