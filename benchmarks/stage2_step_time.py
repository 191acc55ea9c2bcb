"""Stage-2 training step time: DuSSS vs mean teacher vs supervised-only, same network and batch.

Each method runs in its own process (so the peak memory of one does not hide another's) on random images:
the same student U-Net (MONAI ``UNet``), the same labeled and unlabeled batch sizes, the same number of
iterations. DuSSS adds the frozen VLM image encoder (a MONAI ViT through :class:`ViTImageEncoder` inside
:class:`DuSSSVisionLanguageModel`), the grounding decoder f_g with its own optimiser and L_tg, and two more
student losses; mean teacher adds the teacher forward and the EMA update. The text encoder is a lookup
table here: stage 2 caches text embeddings per sentence, so after the first batches a real text encoder
costs nothing per step.

Usage::

    python benchmarks/stage2_step_time.py                       # small CPU defaults
    python benchmarks/stage2_step_time.py --device cuda --size 224 --batch 16 --iters 50 \
        --unet-channels 64 128 256 512 1024 --vit-hidden 768 --vit-layers 12 --vit-heads 12

Prints mean seconds per iteration, the ratio to supervised-only, and the peak memory (CUDA: peak allocated;
CPU: peak resident set size of the process, mostly the imported libraries at these sizes).

Measured (one run each, data from an in-memory list, ``num_workers=0``):

- 2-core CPU, defaults (64 px, batch 2, UNet 16-128, ViT 96 x 2 layers): s/iter 0.014 / 0.032 / 0.038,
  i.e. x1.00 / x2.26 / x2.66 (supervised / mean teacher / DuSSS); at 128 px, batch 4: x1.00 / x1.74 / x2.18.
- NVIDIA H200, 224 px, batch 16 + 16, UNet 32-512 (2 residual units), ViT-B/16 (768, 12 layers), D = 512,
  f_g 128 channels, fp32: 0.024 / 0.040 / 0.086 s/iter = x1.00 / x1.65 / x3.55, peak 787 / 1557 / 2648 MiB;
  with ``--amp``: 0.021 / 0.033 / 0.094 s/iter = x1.00 / x1.54 / x4.46, peak 492 / 878 / 1955 MiB.
- NVIDIA H200, same sizes, ``--amp --embed-dim 512 --decoder-channels 128``, code of 2026-11-27 (multi-tensor EMA,
  fused attention, f_g supervised on the labeled batch in the joint forward): batch 32: 0.0193 / 0.0398 / 0.0776
  s/iter = x1.00 / x2.06 / x4.01 (DuSSS / MT 1.95); batch 16 without f_g's supervision: x1.00 / x1.48 / x3.77
  (2.55). The profile (``--profile``) shows why: the GPU is busy about 26 ms of a DuSSS step of 84 ms, the rest is
  the CPU launching about 2200 kernels (docs/notebook/2026-11-27_benchmarks.md, "Stage 2: step time").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

METHODS = ("supervised", "mean_teacher", "dussss")


class LookupTextEncoder(nn.Module):
    """Text encoder stand-in: one learned vector per sentence hash (stage 2 caches text embeddings anyway)."""

    def __init__(self, hidden_size: int = 64) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.table = nn.Embedding(1024, hidden_size)

    def forward(self, texts):
        from dussss_monai.networks.text_encoder import TextEncoding

        ids = torch.tensor([[hash(t) % 1024] for t in texts], device=self.table.weight.device)
        tokens = self.table(ids)
        return TextEncoding(cls=tokens[:, 0], tokens=tokens, attention_mask=torch.ones_like(ids))


def run_one(args: argparse.Namespace) -> dict:
    from monai.engines import SupervisedTrainer
    from monai.networks.nets import UNet
    from torch.utils.data import DataLoader

    from dussss_monai.engines import DuSSSTrainer, MeanTeacherTrainer
    from dussss_monai.losses import GroundingDecoderLoss, ProbabilityMSELoss, SegmentationLoss
    from dussss_monai.networks import DuSSSVisionLanguageModel, GroundingDecoder, ViTImageEncoder
    from dussss_monai.refiner import VLMPseudoLabelRefiner

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    strides = [2] * (len(args.unet_channels) - 1)
    net = UNet(2, 1, 1, channels=args.unet_channels, strides=strides, num_res_units=2).to(device)
    g = torch.Generator().manual_seed(0)
    n = args.batch * (args.iters + args.warmup)
    texts = ["bilateral infection, lower left lung", "right upper lung", "no finding", "left lung, two areas"]
    labeled = [
        {
            "image": torch.rand(1, args.size, args.size, generator=g),
            "label": (torch.rand(1, args.size, args.size, generator=g) > 0.7).float(),
            "text": texts[i % 4],
        }
        for i in range(n)
    ]
    unlabeled = [{"image": torch.rand(1, args.size, args.size, generator=g), "text": texts[i % 4]} for i in range(n)]
    refiner = decoder_opt = decoder_loss = None
    if args.method == "dussss":
        vit = ViTImageEncoder(
            1,
            img_size=args.size,
            patch_size=args.patch,
            hidden_size=args.vit_hidden,
            mlp_dim=4 * args.vit_hidden,
            num_layers=args.vit_layers,
            num_heads=args.vit_heads,
        )
        vlm = DuSSSVisionLanguageModel(vit, LookupTextEncoder(), embed_dim=args.embed_dim)
        decoder = GroundingDecoder(args.vit_hidden, args.embed_dim, hidden_channels=args.decoder_channels)
        refiner = VLMPseudoLabelRefiner(vlm, decoder).to(device)
        decoder_loss = GroundingDecoderLoss(
            text_guided_weight=args.text_guided_weight,
            grounding_loss=SegmentationLoss(),
            grounding_weight=args.grounding_supervision_weight,
        )
        decoder_opt = torch.optim.Adam(decoder.parameters(), lr=1e-4)
    common = dict(
        device=device,
        max_epochs=1,
        train_data_loader=DataLoader(labeled, batch_size=args.batch),
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-4),
        loss_function=SegmentationLoss(),
        amp=args.amp,
        decollate=False,
    )
    semi = dict(
        unlabeled_data_loader=DataLoader(unlabeled, batch_size=args.batch),
        consistency_loss_function=ProbabilityMSELoss(),
    )  # the bundles' default (soft pseudo labels)
    if args.method == "supervised":
        trainer = SupervisedTrainer(**common)
    elif args.method == "mean_teacher":
        trainer = MeanTeacherTrainer(**common, **semi)
    else:
        trainer = DuSSSTrainer(
            **common, **semi, refiner=refiner, decoder_optimizer=decoder_opt, decoder_loss_function=decoder_loss
        )
    times: list[float] = []
    start = {}

    def _sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    from ignite.engine import Events

    @trainer.on(Events.ITERATION_STARTED)
    def _t0(engine):
        _sync()
        start["t"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _t1(engine):
        _sync()
        times.append(time.perf_counter() - start["t"])

    profiler = None
    if args.profile_out:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        profiler = torch.profiler.profile(activities=activities)

        @trainer.on(Events.ITERATION_STARTED(once=args.warmup + 1))
        def _profile_from_first_timed_iteration(engine):
            profiler.start()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    if profiler is not None:
        _sync()
        profiler.stop()
        sorts = ["self_cuda_time_total", "cpu_time_total"] if device.type == "cuda" else ["cpu_time_total"]
        with open(args.profile_out, "w") as f:
            for sort in sorts:
                f.write(f"{args.method}: {args.iters} iterations, sorted by {sort}\n")
                f.write(profiler.key_averages().table(sort_by=sort, row_limit=40) + "\n")
    timed = times[args.warmup :]
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return {"method": args.method, "sec_per_iter": sum(timed) / len(timed), "iters": len(timed), "peak_mib": peak}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2, help="labeled and unlabeled batch size")
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--unet-channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--vit-hidden", type=int, default=96)
    p.add_argument("--vit-layers", type=int, default=2)
    p.add_argument("--vit-heads", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--decoder-channels", type=int, default=32)
    p.add_argument(
        "--grounding-supervision-weight",
        type=float,
        default=1.0,
        help="beta of f_g's supervision on the labeled masks (bundle default 1.0; the paper: 0)",
    )
    p.add_argument("--text-guided-weight", type=float, default=0.1, help="weight of L_tg (bundle default 0.1)")
    p.add_argument(
        "--profile",
        default=None,
        metavar="PREFIX",
        help="also run mean teacher and DuSSS once more under torch.profiler (not timed) and write the "
        "operator tables to PREFIX_<method>.txt",
    )
    p.add_argument("--method", choices=METHODS, default=None, help="run one method in this process (internal)")
    p.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.method is not None:
        print(json.dumps(run_one(args)))
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    results = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, *argv, "--method", method], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{method} failed:\n{out.stderr[-3000:]}")
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    for method in ("mean_teacher", "dussss") if args.profile else ():
        out_file = f"{args.profile}_{method}.txt"
        # a few iterations only: a profiled DuSSS step records thousands of events (30 took over two minutes)
        out = subprocess.run(
            [sys.executable, __file__, *argv, "--iters", "8", "--method", method, "--profile-out", out_file],
            capture_output=True,
            text=True,
        )
        print(
            f"profile of {method}: {out_file}"
            if out.returncode == 0
            else f"profile of {method} failed: {out.stderr[-500:]}"
        )
    base = results["supervised"]["sec_per_iter"]
    print(
        f"device={args.device} size={args.size} batch={args.batch} iters={args.iters} unet={args.unet_channels} "
        f"vit=({args.vit_hidden}, {args.vit_layers} layers, patch {args.patch}) amp={args.amp}"
    )
    print(f"{'method':<14}{'s/iter':>10}{'x supervised':>14}{'peak MiB':>11}")
    for method in METHODS:
        r = results[method]
        print(f"{method:<14}{r['sec_per_iter']:>10.4f}{r['sec_per_iter'] / base:>14.2f}{r['peak_mib']:>11.0f}")
    ratio = results["dussss"]["sec_per_iter"] / results["mean_teacher"]["sec_per_iter"]
    print(f"DuSSS / mean teacher: {ratio:.2f} (issue #6 asks for at most 1.5)")


if __name__ == "__main__":
    main()
