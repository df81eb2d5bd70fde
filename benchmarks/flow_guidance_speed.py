"""Cost of guidance per patch, as a ratio to the bare network evaluations it needs.

For a batch of B patches, ``guide`` runs ``invert_steps`` velocity evaluations (inversion),
``n_steps`` more on the way back, and on each of the K guided steps one predictor forward and
backward pass (rule x0) or, for DPS, a velocity backward pass as well. The "bare" time is those
network calls alone, timed on the same batch; the ratio says what the sampler, the hooks and the
bookkeeping add. Also: time per patch at B = 1 and at B = ``--batch``, i.e. what batching buys.

    python benchmarks/flow_guidance_speed.py [--size 32] [--batch 8] [--device cpu|cuda]
         [--prior RUN/last.pt --predictor RUN/best.pt]   (default: untrained compact networks)
"""

from __future__ import annotations

import argparse
import time


def _timed(fn, repeats: int = 1) -> float:
    import torch

    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guided", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prior", default=None)
    parser.add_argument("--predictor", default=None)
    args = parser.parse_args(argv)

    import torch

    from wsnodule_core.flow.guidance import GuidanceConfig, guide, nodule_logit
    from wsnodule_core.flow.predictors import PredictorConfig, build_predictor, load_predictor
    from wsnodule_core.flow.train_prior import load_prior
    from wsnodule_core.flow.velocity import VelocityConfig, build_velocity_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    prior = (load_prior(args.prior, device)[0] if args.prior else
             build_velocity_model(VelocityConfig.compact()).to(device).eval())
    predictor = (load_predictor(args.predictor, device)[0] if args.predictor else
                 build_predictor(PredictorConfig("cnn3d"), seed=0).to(device).eval())
    for p in list(prior.parameters()) + list(predictor.parameters()):
        p.requires_grad_(False)
    print(f"device {device}, {args.threads} thread(s), patches {args.size}^3, {args.steps} steps each way, "
          f"K = {args.guided}")
    print("| rule | batch | guide s/patch | bare network calls s/patch | ratio |")
    print("|---|---:|---:|---:|---:|")
    for rule in ("x0", "dps"):
        config = GuidanceConfig(t0=0.5, n_steps=args.steps, guided_steps=args.guided, rule=rule)
        for batch in (1, args.batch):
            x = torch.rand(batch, 1, args.size, args.size, args.size, device=device) * 0.3
            t = torch.full((batch,), 0.5, device=device)

            def bare() -> None:
                with torch.no_grad():
                    for _ in range(2 * args.steps - args.guided * (rule == "dps")):
                        prior(x, t)
                for _ in range(args.guided):
                    if rule == "dps":
                        state = x.clone().requires_grad_(True)
                        clean = state + 0.5 * prior(state, t)
                    else:
                        clean = x.clone().requires_grad_(True)
                        state = clean
                    nodule_logit(predictor, clean).sum().backward()

            guide(prior, predictor, x, config, keep_trajectory=False)  # warm-up
            guided = _timed(lambda: guide(prior, predictor, x, config, keep_trajectory=False))
            network = _timed(bare)
            print(f"| {rule} | {batch} | {guided / batch:.3f} | {network / batch:.3f} | {guided / network:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
