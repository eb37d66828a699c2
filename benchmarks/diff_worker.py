"""One measured diff variant in its own process, so its peak RSS is its own.

Usage: python diff_worker.py MODE BASE FT OUT_JSON [DEVICE]
MODE: ours (mechdiff's streaming diff), stream_norms (stream both checkpoints, per-tensor
norms in plain torch), load_whole (load both state dicts whole, then the same norms),
full_svd (torch.linalg.svdvals of every delta), lowrank (torch.svd_lowrank of every delta
with the same k as ours, niter=2, plus the delta's squared Frobenius norm for a noise level).
On DEVICE (default cpu; "ours" then runs with --device DEVICE): floor (read each pair, move
it to DEVICE, ||D|| and ||W|| in plain torch), lowrank_loop (the ten lines a user writes:
torch.svd_lowrank(D, q=k+oversample, niter=2) of every delta on DEVICE), planted_svd (exact
singular values of the planted tensors only, on DEVICE: the accuracy reference).
A CUDA context is made before the clock starts, in every mode alike.
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


def _matrix_deltas(base: str, ft: str, device: str = "cpu", names: set[str] | None = None):
    """(name, fp32 delta on `device`) of every aligned 2-D pair (or of `names`), streamed."""
    from mechdiff.checkpoint import open_source, pair_sources

    b, f = open_source(base), open_source(ft)
    for pair in pair_sources(b, f).pairs:
        if len(pair.base_shape) == 2 and (names is None or pair.name in names):
            yield pair.name, f.get(pair.ft_name).to(device).float() - b.get(pair.base_name).to(device).float()


def _floor(base: str, ft: str, device: str) -> dict:
    from mechdiff.checkpoint import open_source, pair_sources

    b, f = open_source(base), open_source(ft)
    out = {}
    for pair in pair_sources(b, f).pairs:
        wb = b.get(pair.base_name).to(device).float()
        d = f.get(pair.ft_name).to(device).float() - wb
        out[pair.name] = float(torch.linalg.vector_norm(d) / torch.linalg.vector_norm(wb))
    return out


def _lowrank_loop(base: str, ft: str, device: str) -> dict:
    from mechdiff.weightdecomp.spectral import SpectralConfig

    q, out = SpectralConfig().k + SpectralConfig().oversample, {}
    for name, d in _matrix_deltas(base, ft, device):
        _, s, _ = torch.svd_lowrank(d, q=min(q, *d.shape), niter=2)
        out[name] = {"sv": s.double().tolist()}
    return out


def _planted_svd(base: str, ft: str, device: str) -> dict:
    truth = json.loads((Path(base).parent / "manifest.json").read_text())["truth"]
    planted = {name for name, t in truth.items() if t.get("rank")}
    return {name: torch.linalg.svdvals(d).double().cpu().tolist()[:32] for name, d in _matrix_deltas(base, ft, device, planted)}


def _full_svd(base: str, ft: str) -> dict:
    return {name: torch.linalg.svdvals(d).numpy().astype(np.float64).tolist() for name, d in _matrix_deltas(base, ft)}


def _lowrank(base: str, ft: str) -> dict:
    from mechdiff.weightdecomp.spectral import SpectralConfig

    k, out = SpectralConfig().k, {}
    for name, d in _matrix_deltas(base, ft):
        _, s, _ = torch.svd_lowrank(d, q=min(k, *d.shape), niter=2)
        out[name] = {"sv": s.double().tolist(), "frob2": float(d.double().square().sum()), "shape": list(d.shape)}
    return out


def _ours(base: str, ft: str, device: str = "auto") -> dict:
    from mechdiff.api import diff_checkpoints
    from mechdiff.diffing.weights.diff import DiffConfig

    result = diff_checkpoints(base, ft, config=DiffConfig(device=device), progress=False)
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


def _run(mode: str, base: str, ft: str, device: str | None) -> dict:
    if device is None:  # the CPU suite's rows, as they always ran
        return {"ours": _ours, "stream_norms": _stream_norms, "load_whole": _load_whole, "full_svd": _full_svd,
                "lowrank": _lowrank}[mode](base, ft)
    return {"ours": _ours, "floor": _floor, "lowrank_loop": _lowrank_loop,
            "planted_svd": _planted_svd}[mode](base, ft, device)


def main() -> None:
    mode, base, ft, out = sys.argv[1:5]
    device = sys.argv[5] if len(sys.argv) > 5 else None
    torch.set_num_threads(torch.get_num_threads())
    cuda = device is not None and device.startswith("cuda")
    if cuda:
        torch.zeros(1, device=device)  # the CUDA context: not part of any row
    start = time.perf_counter()
    detail = _run(mode, base, ft, device)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else 0.0
    Path(out).write_text(json.dumps({"mode": mode, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
                                     "peak_gpu_mb": peak_gpu_mb, "detail": detail}))


if __name__ == "__main__":
    main()
