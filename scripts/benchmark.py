#!/usr/bin/env python
"""Speed and memory of FlexNet / FlexTCN, always as ratios against baselines measured in the same run.

    python scripts/benchmark.py                       # CPU, batch 64, 32 px, all models, ~3-5 min on 2 cores
    python scripts/benchmark.py --quick               # flexnet16 only, ~1 min
    python scripts/benchmark.py --device cuda --amp   # GPU, bf16 autocast
    python scripts/benchmark.py --threads 1 --sections memory --json mem.json   # the memory section alone

Sections (each row: FlexConv time / baseline time, both timed in this process, interleaved round by round):
  models    train step (forward + backward + Adam) and eval forward vs a CIFAR ResNet-44 (0.66M params) and vs
            the same network with fixed kernels of the cropped sizes; initial mask widths and trained widths
            (``set_mask_width``: 0.5 -> 33x33 for FlexNet, 1.0 -> the whole sequence for FlexTCN).
  memory    peak memory of a training step above the resting state (CUDA: max_memory_allocated; CPU: RSS of a
            fresh subprocess sampled every 0.5 ms over the first two steps) vs ResNet-44, without and with
            ``model.set_grad_checkpointing(True)`` (timm's checkpoint_seq over the blocks; ``--no-grad-ckpt``
            drops those rows), plus the training step time of the same configurations vs ResNet-44, timed
            interleaved in this process.
  layers    one FlexConv2d (kernel net + mask + conv) vs nn.Conv2d at the same kernel size, training step.
  dispatch  the automatic FFT/direct choice vs the faster of the two measured here, 2-D kernels 3..33 and
            1-D causal kernels as long as the sequence.
  deploy    (not in the default set) eval forward of the reparameterized model (``timm.utils.reparameterize_model``:
            fixed kernels, no kernel nets) vs the same model with its kernel cache and vs ResNet-44, and the
            reparameterized model in onnxruntime (``torch.onnx.export``, ``pip install ".[onnx]"``) vs in PyTorch,
            ResNet-44 likewise; initial and trained widths, with the max |difference| of each pair of outputs
            relative to the largest output.
  channels_last  (not in the default set) the image models of --models and ResNet-44, each in NCHW and in
            channels_last, all four timed interleaved in this process: train step and eval forward, each model's
            channels_last / NCHW time and its ratio to ResNet-44 in the same layout.

``--channels-last`` runs every image network of the other sections in ``torch.channels_last`` (module and input,
as timm's train.py does): the FlexNets, ResNet-44, the fixed-kernel copies and nn.Conv2d (layers, and the 2-D
dispatch inputs), so every ratio stays like-for-like. FlexTCN (3-D sequence tensors) has no channels_last layout
and runs as before. Recorded as ``env.channels_last`` in the JSON.

Timing (``torch.utils.benchmark.Timer``): each round times the baseline and the candidate back to back; a row
reports the median over rounds of the per-round ratio and the minimum time of each side (the least disturbed by
other processes). The code is :mod:`flexconv_zoo.benchmarking`; this script parses the arguments.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import torch  # noqa: E402

from flexconv_zoo.benchmarking import IMAGE_MODELS, SEQ_MODELS, SECTIONS, run_benchmark  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--img-size', type=int, default=32)
    p.add_argument('--seq-len', type=int, default=1000, help='FlexTCN input length (kernel grid)')
    p.add_argument('--models', default=','.join(IMAGE_MODELS + SEQ_MODELS))
    p.add_argument('--memory-models', default='flexnet16', help="models for the memory section ('' for none)")
    p.add_argument('--no-grad-ckpt', dest='grad_ckpt', action='store_false',
                   help='memory section: skip the rows with model.set_grad_checkpointing(True)')
    p.add_argument('--rounds', type=int, default=3, help='interleaved timing rounds per row')
    p.add_argument('--compile', action='store_true', help='torch.compile every model (baselines too)')
    p.add_argument('--amp', action='store_true', help='bf16 autocast (FFTs stay float32)')
    p.add_argument('--channels-last', action='store_true',
                   help='image networks (FlexNets and every baseline) and their inputs in torch.channels_last')
    p.add_argument('--sections', default='models,memory,layers,dispatch',
                   help="comma-separated subset of models,memory,layers,dispatch (the default) and channels_last "
                        "(NCHW vs channels_last in one run) and deploy (reparameterized / onnxruntime eval), e.g. "
                        "'--sections memory' for the memory table alone")
    p.add_argument('--quick', action='store_true', help='flexnet16 only, fewer rounds and dispatch sizes (~1 min)')
    p.add_argument('--full', action='store_true', help='every dispatch size up to 16,000 steps, all rounds')
    p.add_argument('--dispatch-batch', type=int, help='dispatch section: 2-D batch size (default 16 on CPU, 64 on '
                   'CUDA or with --full)')
    p.add_argument('--dispatch-2d', type=int, nargs='+', metavar='TAPS', help='dispatch section: the 2-D kernel sizes')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave the default)')
    p.add_argument('--json', default='benchmark.json', help='where to write the results')
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.rounds = 'flexnet16', 2
    args.models = [m for m in args.models.split(',') if m]
    args.memory_models = [m for m in args.memory_models.split(',') if m]
    args.sections = set(args.sections.split(','))
    if args.sections - set(SECTIONS):
        p.error(f"unknown --sections {sorted(args.sections - set(SECTIONS))}; choose from {', '.join(SECTIONS)}")
    given_batch, given_2d = args.dispatch_batch, args.dispatch_2d
    args.dispatch_batch = 64 if args.device.startswith('cuda') or args.full else 16
    args.dispatch_batch_1d = 16 if args.device.startswith('cuda') or args.full else 4
    if args.quick:
        args.dispatch_2d, args.dispatch_1d = [3, 9, 33], [64, 1000]
    elif args.full:
        args.dispatch_2d, args.dispatch_1d = list(range(3, 34, 2)), [64, 128, 256, 512, 1000, 2000, 4000, 8000, 16000]
    else:
        args.dispatch_2d, args.dispatch_1d = [3, 5, 7, 9, 11, 13, 17, 21, 25, 33], [64, 256, 1000, 4000]
    if given_batch is not None:
        if given_batch < 1:
            p.error(f"--dispatch-batch {given_batch} is invalid: it must be a positive integer")
        args.dispatch_batch = given_batch
    if given_2d:
        if min(given_2d) < 1:
            p.error(f"--dispatch-2d {min(given_2d)} is invalid: kernel sizes are positive")
        args.dispatch_2d, args.dispatch_1d = given_2d, []  # the 2-D sizes asked for, alone
    return args


def main():
    args = parse_args()
    run_benchmark(args, command=' '.join(['python', 'scripts/benchmark.py', *sys.argv[1:]]))


if __name__ == '__main__':
    main()
