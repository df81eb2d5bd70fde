"""Cost of the PW4MedSeg probabilistic UNETR and of its attention (parameters, time, peak memory).

    python benchmarks/pw4medseg_model_cost.py                   # CPU, one thread
    python benchmarks/pw4medseg_model_cost.py --device cuda --threads 4

Each measurement runs in its own process (so the CPU peak, read from ``ru_maxrss``, belongs to
that measurement alone; on CUDA ``torch.cuda.max_memory_allocated``). "extra" memory is the peak
over what the model, its parameters and the input already held. Times: median wall-clock time of
``--repeats`` runs after the first, and the process CPU time (less sensitive to a busy machine
when run on one thread). Measured:

- compact preset: forward + backward on its 32^3 crop and on 48^3;
- paper preset: parameter count and one inference forward at 96^3 (skipped with a message when it
  does not finish within ``--paper-timeout`` seconds; forward + backward too on CUDA);
- PMSA (paper width: hidden 768, 12 heads) forward + backward at ``--tokens`` tokens, computed
  with per-token projections (the library) and with the materialised [q_i; k_j] concatenation.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from wsnodule_core.pw4medseg.model import (
    LOGVAR_LIMIT,
    ProbabilisticSelfAttention,
    ProbabilisticUNETR,
    PTransformerConfig,
    count_parameters,
)
from wsnodule_core.training.device import choose_device


class ConcatenatingPMSA(ProbabilisticSelfAttention):
    """PMSA as the authors wrote it: the (B, H, N, N, 2d) concatenation built explicitly."""

    def pair_parameters(self, q, k):
        b, h, n, d = q.shape
        pair = torch.cat([q.unsqueeze(3).expand(b, h, n, n, d), k.unsqueeze(2).expand(b, h, n, n, d)], dim=-1)
        params = self.pair_proj(pair)
        return params[..., 0], params[..., 1].clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(step, device: torch.device, repeats: int) -> dict:
    """Peak memory of the first call of ``step``, median time of ``repeats`` more."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_mib()
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    _sync(device)
    first, first_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        extra, base = peak - base / 2**20, base / 2**20
    else:
        peak = _rss_mib()
        extra = peak - base
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    times.sort()
    cpu.sort()
    return {"first_s": first, "median_s": times[len(times) // 2] if times else first,
            "cpu_s": cpu[len(cpu) // 2] if cpu else first_cpu, "peak_mib": peak, "extra_mib": extra}


def _unetr_job(preset: str, size: int, device: torch.device, backward: bool, repeats: int) -> dict:
    config = getattr(PTransformerConfig, preset)()
    model = ProbabilisticUNETR(config).to(device).train(backward)
    x = torch.randn(1, 1, size, size, size, device=device)

    def step():
        if backward:
            model.zero_grad(set_to_none=True)
            logits, kl = model(x, return_kl=True)
            (logits.float().mean() + kl.sum()).backward()
        else:
            with torch.no_grad():
                model(x)

    return {"params": count_parameters(model), "tokens": (size // config.patch_size) ** 3,
            **_measure(step, device, repeats)}


def _pmsa_job(kind: str, tokens: int, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    cls = ConcatenatingPMSA if kind == "concatenation" else ProbabilisticSelfAttention
    attn = cls(768, 12).to(device).train()
    x = torch.randn(1, tokens, 768, device=device, requires_grad=True)

    def step():
        attn.zero_grad(set_to_none=True)
        out, kl = attn(x)
        (out.mean() + kl).backward()

    result = _measure(step, device, repeats)
    with torch.no_grad():
        result["checksum"] = float(attn(x, stochastic=False)[0].double().abs().sum())
    return result


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = choose_device(args.device).device
    job = json.loads(args.job)
    if job["kind"] == "unetr":
        result = _unetr_job(job["preset"], job["size"], device, job["backward"], job["repeats"])
    else:
        result = _pmsa_job(job["impl"], job["tokens"], device, job["repeats"])
    print(json.dumps(result))


def _run(args: argparse.Namespace, job: dict, timeout: float | None = None) -> dict | None:
    command = [sys.executable, __file__, "--job", json.dumps(job), "--device", args.device,
               "--threads", str(args.threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as error:
        print(f"  failed: {error.stderr.strip().splitlines()[-1] if error.stderr.strip() else error}")
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(label: str, r: dict) -> str:
    return (f"{label:<34} time {r['median_s']:7.3f} s (CPU {r['cpu_s']:.3f} s, first {r['first_s']:.3f} s)"
            f"  peak {r['peak_mib']:8.1f} MiB  extra {r['extra_mib']:8.1f} MiB")


def _compact(args: argparse.Namespace) -> None:
    compact = PTransformerConfig.compact()
    print(f"\ncompact preset: {compact}")
    for size in (compact.img_size[0], 48):
        r = _run(args, {"kind": "unetr", "preset": "compact", "size": size, "backward": True,
                        "repeats": args.repeats})
        if r:
            print(f"  params {r['params']:,}, {r['tokens']} tokens")
            print("  " + _line(f"forward+backward 1x1x{size}^3", r))


def _paper(args: argparse.Namespace, cuda: bool) -> None:
    paper = PTransformerConfig.paper()
    print(f"\npaper preset: {paper}")
    size = paper.img_size[0]
    r = _run(args, {"kind": "unetr", "preset": "paper", "size": size, "backward": False, "repeats": 0},
             timeout=args.paper_timeout + 30.0)  # + model construction
    if r is None or (r and r["first_s"] > args.paper_timeout):
        print(f"  forward at {size}^3 skipped: it does not finish within {args.paper_timeout:.0f} s on this "
              f"device ({args.threads} thread(s)); params: {count_parameters(ProbabilisticUNETR(paper)):,}")
        return
    if r:
        print(f"  params {r['params']:,}, {r['tokens']} tokens")
        print("  " + _line(f"inference forward 1x1x{size}^3", r))
    if cuda:
        r = _run(args, {"kind": "unetr", "preset": "paper", "size": size, "backward": True,
                        "repeats": args.repeats})
        if r:
            print("  " + _line(f"forward+backward 1x1x{size}^3", r))


def _pmsa(args: argparse.Namespace) -> None:
    print(f"\nPMSA, hidden 768, 12 heads, batch 1, {args.tokens} tokens, forward+backward:")
    results = {}
    for impl in ("projections", "concatenation"):
        results[impl] = r = _run(args, {"kind": "pmsa", "impl": impl, "tokens": args.tokens,
                                        "repeats": args.repeats})
        if r:
            print("  " + _line(impl, r))
    a, b = results.get("projections"), results.get("concatenation")
    if a and b:
        same = abs(a["checksum"] - b["checksum"]) <= 1e-5 * abs(b["checksum"])
        print(f"  concatenation / projections: memory x{b['extra_mib'] / max(a['extra_mib'], 1e-6):.1f}, "
              f"time x{b['median_s'] / a['median_s']:.1f}; same output: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="auto, cuda, cuda:N, mps or cpu (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--tokens", type=int, default=216, help="token count of the PMSA comparison (default 216)")
    p.add_argument("--paper-timeout", type=float, default=60.0, help="seconds allowed for the paper forward")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parts", default="compact,paper,pmsa", help="which measurements (default: all three)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        return _child(args)
    device = choose_device(args.device)
    print(f"{device.describe()}, torch {torch.__version__}, {args.threads} CPU thread(s)")
    parts = {part.strip() for part in args.parts.split(",")}
    if "compact" in parts:
        _compact(args)
    if "paper" in parts:
        _paper(args, device.device.type == "cuda")
    if "pmsa" in parts:
        _pmsa(args)


if __name__ == "__main__":
    main()
