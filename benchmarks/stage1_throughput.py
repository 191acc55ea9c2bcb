"""Stage-1 training throughput (image-text pairs per second) and peak memory.

Runs :class:`~dussss_monai.engines.vlm_pretrainer.VLMPretrainer` iterations on random images and a pool of
templated sentences, twice: with the text encoder frozen and cached (the default), and with the text encoder
trained (no cache, a momentum copy of the text encoder). The first ``--warmup`` iterations are not timed
(they fill the text cache and warm up kernels).

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak resident set size
(``resource.getrusage(...).ru_maxrss``), which only grows, so the second configuration's number includes the
first's; run with ``--only frozen`` / ``--only trained`` for separate numbers.

Usage::

    python benchmarks/stage1_throughput.py --image-size 224 --patch-size 16 --hidden-size 768 --num-layers 12 \\
        --batch-size 8 --iterations 5 --device cpu
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch


def build(args: argparse.Namespace, freeze_text: bool):
    from dussss_monai.networks import DuSSSVisionLanguageModel, HFTextEncoder, ViTImageEncoder

    text = HFTextEncoder(args.text_model, max_length=args.max_length, freeze=freeze_text, cache=True)
    image = ViTImageEncoder(
        in_channels=1,
        img_size=args.image_size,
        patch_size=args.patch_size,
        hidden_size=args.hidden_size,
        mlp_dim=4 * args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
    )
    return DuSSSVisionLanguageModel(image, text, embed_dim=args.embed_dim).to(args.device)


def sentences(n: int) -> list[str]:
    zones = ["upper", "middle", "lower"]
    out = []
    for i in range(n):
        z1, z2 = zones[i % 3], zones[(i // 3) % 3]
        k = 1 + i % 3
        out.append(
            f"Bilateral pulmonary infection, {['one', 'two', 'three'][k - 1]} infected areas, {z1} left lung and {z2} right lung."
        )
    return out


def run(args: argparse.Namespace, freeze_text: bool) -> dict[str, float]:
    from dussss_monai.engines import VLMPretrainer

    torch.manual_seed(0)
    vlm = build(args, freeze_text)
    pool = sentences(args.distinct_texts)
    g = torch.Generator().manual_seed(0)
    n_iter = args.warmup + args.iterations
    batches = []
    for _ in range(n_iter):
        idx = torch.randint(0, len(pool), (args.batch_size,), generator=g).tolist()
        x = torch.rand(args.batch_size, 1, args.image_size, args.image_size, generator=g)
        batches.append({"image": x, "image_aug": x.flip(-1), "text": [pool[i] for i in idx]})
    opt = torch.optim.Adam(vlm.trainable_parameters(), 3e-5)
    trainer = VLMPretrainer(args.device, 1, batches, vlm, opt, amp=args.amp)
    times: list[float] = []
    state = {"t": 0.0}

    from ignite.engine import Events

    @trainer.on(Events.ITERATION_STARTED)
    def _start(engine):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        state["t"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _stop(engine):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - state["t"])

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    timed = times[args.warmup :]
    n_trainable = sum(p.numel() for p in vlm.trainable_parameters())
    res = {
        "pairs_per_s": args.batch_size * len(timed) / sum(timed),
        "s_per_iter": sum(timed) / len(timed),
        "trainable_params_M": n_trainable / 1e6,
        "all_params_M": sum(p.numel() for p in vlm.parameters()) / 1e6,
    }
    if args.device.startswith("cuda"):
        res["peak_mem_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        res["peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--hidden-size", type=int, default=768)
    p.add_argument("--num-layers", type=int, default=12)
    p.add_argument("--num-heads", type=int, default=12)
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--distinct-texts", type=int, default=27, help="size of the sentence pool (templated reports repeat)"
    )
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--text-model", default=None, help="Hugging Face id or folder (default: offline all-MiniLM-L6-v2)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--only", choices=("frozen", "trained"), default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device={args.device} threads={torch.get_num_threads()} image={args.image_size} patch={args.patch_size} "
        f"width={args.hidden_size} layers={args.num_layers} batch={args.batch_size} iterations={args.iterations} "
        f"(+{args.warmup} warm-up) amp={args.amp}",
        flush=True,
    )
    modes = [("frozen+cached text encoder", True), ("trained text encoder", False)]
    if args.only:
        modes = [m for m in modes if (m[1] if args.only == "frozen" else not m[1])]
    for name, frozen in modes:
        r = run(args, frozen)
        mem = (
            f"peak GPU {r['peak_mem_MiB']:.0f} MiB" if "peak_mem_MiB" in r else f"peak RSS {r['peak_rss_MiB']:.0f} MiB"
        )
        print(
            f"{name:28s} {r['pairs_per_s']:8.2f} pairs/s  {r['s_per_iter']:.3f} s/iter  "
            f"trainable {r['trainable_params_M']:.1f} M / all {r['all_params_M']:.1f} M params  {mem}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
