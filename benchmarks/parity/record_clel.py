"""Record hankook/CLEL (commit ccccf50) step by step: `train.py` run as `__main__`, unchanged.

    /work/torchvenv/bin/python benchmarks/parity/record_clel.py --official /work/official/CLEL \\
        --precision float64 --out tests/data/parity/clel_float64.npz

`train.py` runs through `runpy` with `configs/cifar10.yaml` plus dot-list overrides (its own
`utils.parse_config`), its own `main()`: model, the two optimizers and schedulers, the EMA and
ignite's `Engine` with the official handlers. Needs pytorch-ignite, omegaconf and kornia 0.6.3
(the last release whose `AugmentationSequential` accepts the `return_transform=False` that
`datasets.get_augmentation` passes; 0.6.4+ raise on it). Replaced from outside:

* the data: `ignite.distributed.auto_dataloader` returns fixed batches (`FixedLoader`) of real
  CIFAR-10 training images in [0, 1] (no dequantisation noise: the batch keys are exactly the
  step's inputs); `datasets.get_dataset` returns them with CIFAR-10's mean / std;
* evaluation: `utils.FIDEvaluation` / `utils.NNEvaluation` become plain `utils.Evaluation`s (no
  torchmetrics, never run: `val_freq` is beyond the recorded steps); TensorBoard stubbed;
  torchvision is the installed one with its C++-operator meta registrations skipped
  (`recording.import_real_torchvision`), for `models.resnet18`'s classes;
* network size, to keep the file small (the official `get_ebm` / `get_encoder` run unchanged on
  top): `architectures.ResNet` is called with stages [(8,1),(8,1),(16,1),(16,1)] instead of
  `resnet_small`'s [(64,1),(64,1),(128,1),(128,1)]; `architectures.get_mlp` gets hidden width 32
  instead of the hard-coded 2048 (EBM head and encoder head); the encoder name `resnet18_tiny` is
  torchvision's `ResNet(BasicBlock, [1, 1, 1, 1])` with every stage 16 wide (the 3x3 64-channel
  stem is CLEL's own replacement, so stage 1 has a 1x1 downsample shortcut);
* `OptimizerTap`s on both optimizers: the EBM Adam's `before` reads the gradients of every
  parameter (one backward feeds both optimizers) and the step's `outputs`; the encoder SGD's
  `after` records the state and stops ignite after `--steps` iterations.

The random augmentations (kornia; `sampler.augmentation`, `model.ebm_augmentation`,
`model.encoder_augmentation`) are recorded as their output images (`RandomTape.watch`): a replay
injects the augmented batch, not kornia's parameter draws.
"""

import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recording  # noqa: E402  isort: skip  (imported before torch, as it was)

import torch  # noqa: E402

COMMIT = "ccccf500c6"
EBM_LAYERS = [(8, 1), (8, 1), (16, 1), (16, 1)]
MLP_HIDDEN = 32
ENCODER_WIDTH = 16


def parse():
    def more(p):
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--batch", type=int, default=4)
        p.add_argument(
            "--seed", type=int, default=1, help="seeds torch, NumPy and random (seed 1: 3 chain re-inits in 3 steps)"
        )

    return recording.parse_recorder_args(__doc__, "/work/official/CLEL", more)


def overrides(a, log_dir):
    return [
        f"logdir={log_dir}",
        "encoder.name=resnet18_tiny",
        "encoder.out_dim=16",
        "ebm.name=resnet_small",
        "ebm.projection_layers=[16,32,16]",
        f"data.batch_size={a.batch}",
        "data.num_workers=0",
        "sampler.num_steps=2",
        "sampler.memory_size=12",
        "sampler.memory_init=0.25",
        f"ema.halflife={2 * a.batch}",
        "num_iterations=100",
        "log_freq=1",
        "val_freq=100000",
        "save_freq=100000",
    ]


def tiny_resnet(torchvision):
    resnet = torchvision.models.resnet

    class TinyResNet(resnet.ResNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # torchvision sizes fc for 512 features; CLEL replaces fc using its input width.
            self.fc = torch.nn.Linear(ENCODER_WIDTH, self.fc.out_features)

        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            return super()._make_layer(block, ENCODER_WIDTH, blocks, stride, dilate)

    def resnet18_tiny(**kwargs):
        return TinyResNet(resnet.BasicBlock, [1, 1, 1, 1], **kwargs)

    return resnet18_tiny


def main():
    a = parse()
    out = recording.output_path(a.out, f"clel_{a.precision}.npz")
    torchvision = recording.import_real_torchvision()
    torchvision.models.__dict__["resnet18_tiny"] = tiny_resnet(torchvision)
    root = recording.use_checkout(a.official, "torch.utils.tensorboard", torchvision_stub=False)
    log_dir = os.path.join(tempfile.mkdtemp(prefix="clel_parity_"), "run")
    argv = [os.path.join(root, "train.py"), os.path.join(root, "configs/cifar10.yaml")] + overrides(a, log_dir)
    import kornia  # noqa: PLC0415

    golden = recording.recorder_golden(
        __file__,
        "hankook/CLEL",
        COMMIT,
        a.precision,
        a.steps,
        argv[1:],
        seed=a.seed,
        kornia_version=kornia.__version__,
        architecture={
            "ebm_layers": EBM_LAYERS,
            "mlp_hidden": MLP_HIDDEN,
            "encoder": f"torchvision ResNet(BasicBlock, [1,1,1,1]), stages "
            f"{ENCODER_WIDTH} wide, CLEL's 64-channel 3x3 stem",
        },
    )
    golden.meta["notes"] = [
        "train.py runs as __main__ (runpy) with configs/cifar10.yaml + overrides (settings); its main(), "
        "optimizers, schedulers, EMA and ignite Engine with the official handlers",
        "ignite.distributed.auto_dataloader -> fixed batches in [0, 1] without dequantisation noise; "
        "datasets.get_dataset -> those batches with CIFAR-10 mean/std; FID/NN evaluations never run",
        "smaller networks: architectures.ResNet stages replaced by ebm_layers, get_mlp hidden 2048 -> mlp_hidden, "
        "encoder resnet18_tiny (see architecture); get_ebm's spectral_norm and get_encoder's stem / Normalize "
        "/ head run unchanged",
        "draws labelled aug:* are the OUTPUT images of the kornia augmentations (sampler chain starts, "
        "ebm_augmentation of x_pos, encoder_augmentation of cat[x_pos, x_pos])",
        "init/ebm.*, init/encoder.*: the model state_dict (the ema_* copies equal them at init); step/k/probe/param "
        "holds probes (256 evenly spaced entries) of ebm.*, encoder.*, ema_ebm.*, ema_encoder.* after every step, "
        "step/k/probe/opt/{ebm,encoder}/... of the optimizer slots; x_neg probed but in full at the last step; "
        "the float32 file also holds the final state dict in full (step/<last>/param, for the converter test)",
        "step/k/loss/*: the official outputs dict of JointModel.forward (metrics/loss, e_pos, e_neg, e_diff, "
        "s_pos, latent_loss); step/k/opt/lr_ebm, lr_encoder: the learning rates used by step k",
        "EMA: decay 0 while engine.state.iteration < halflife / batch_size (= 2), then 0.5 ** (batch / halflife)",
    ]

    # Import before float64_mode: torch.jit.script (run by ignite's imports) checks annotations
    # against torch.FloatTensor, which float64_mode replaces by a function.
    import architectures  # noqa: PLC0415
    import datasets  # noqa: PLC0415
    import ignite.distributed as idist  # noqa: PLC0415
    import models  # noqa: F401, PLC0415
    import utils as official_utils  # noqa: PLC0415

    with recording.float64_mode(a.precision == "float64"):
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
        import random  # noqa: PLC0415

        random.seed(a.seed)
        x, y = recording.cifar10_tensors("train", range(a.steps * a.batch), center=False)
        batches = [(x[k * a.batch : (k + 1) * a.batch], y[k * a.batch : (k + 1) * a.batch]) for k in range(a.steps)]
        for k, (xb, _yb) in enumerate(batches):
            golden.add(f"batch/{k}/x_pos", xb)
        tape = recording.RandomTape([root])
        resnet, get_mlp = architectures.ResNet, architectures.get_mlp
        architectures.ResNet = lambda layers, **kw: resnet(EBM_LAYERS, **kw)
        architectures.get_mlp = lambda dims, **kw: get_mlp([MLP_HIDDEN if d == 2048 else d for d in dims], **kw)
        datasets.get_dataset = lambda name, root: dict(
            train=batches,
            test=batches,
            num_classes=10,
            input_shape=(3, 32, 32),
            mean=[0.4914, 0.4822, 0.4465],
            std=[0.2470, 0.2435, 0.2616],
        )
        official_utils.FIDEvaluation = lambda *args: official_utils.Evaluation("fid", "min")
        official_utils.NNEvaluation = lambda *args: official_utils.Evaluation("nn", "max")
        state = {}

        def start():
            loc = recording.frame_locals("main")
            model, (opt1, opt2), (_sch1, _sch2) = loc["model"], loc["optimizers"], loc["schedulers"]
            state["model"] = model
            sd = model.state_dict()
            golden.add_all("init", {k: v for k, v in sd.items() if k.startswith(("ebm.", "encoder."))})
            golden.add("init_state/memory", model.sampler.memory)
            tape.watch(model.sampler.augmentation, "forward", "aug:sampler")
            tape.watch(model.ebm_augmentation, "forward", "aug:ebm")
            tape.watch(model.encoder_augmentation, "forward", "aug:encoder")
            names = {id(p): f"ebm.{n}" for n, p in model.ebm.named_parameters()}
            names.update({id(p): f"encoder.{n}" for n, p in model.encoder.named_parameters()})

            def before(k):
                loc = recording.frame_locals("training_step")
                for n, v in loc["outputs"].items():
                    if n.startswith("metrics/"):
                        golden.add(f"step/{k}/loss/{n[len('metrics/') :]}", v)
                recording.add_full_at_last(golden, k, a.steps - 1, "x_neg", loc["outputs"]["images/x_neg"])
                recording.add_lr(golden, f"step/{k}/opt/lr_ebm", opt1)
                recording.add_lr(golden, f"step/{k}/opt/lr_encoder", opt2)
                if k == 0:
                    recording.add_grads(golden, "step/0/grad/ebm.", model.ebm)
                    recording.add_grads(golden, "step/0/grad/encoder.", model.encoder)

            def after(k):
                sd = model.state_dict()
                last = k == a.steps - 1
                # Per step: probes (README "probe/") of every weight, buffer (spectral-norm u, v,
                # BN statistics), EMA copy and optimizer slot; the eval outputs check the final
                # networks in full.
                recording.add_step_probes(
                    golden,
                    k,
                    {n: v for n, v in sd.items() if not n.startswith("sampler.")},
                    opt1,
                    {id(p): n for n, p in model.ebm.named_parameters()},
                    prefix="ebm/",
                )
                recording.add_step_probes(
                    golden, k, {}, opt2, {id(p): n for n, p in model.encoder.named_parameters()}, prefix="encoder/"
                )
                if last and a.precision == "float32":
                    # The final state in full (float32 file only): tests/test_convert_clel.py
                    # converts it and compares the official eval outputs, EMA and memory.
                    golden.add_all(f"step/{k}/param", {n: v for n, v in sd.items() if not n.startswith("sampler.")})
                if last:
                    golden.add(f"step/{k}/state/memory", model.sampler.memory)

            recording.OptimizerTap(opt1, a.steps + 1, before=before)
            recording.OptimizerTap(opt2, a.steps, after=after, tape=tape)
            tape.step = 0

        idist.auto_dataloader = lambda dataset, **kw: recording.FixedLoader(batches, on_iter=start)
        with tape:
            recording.run_official_script(argv, tape)
            if "model" not in state:
                raise SystemExit("the official main() never reached the training loop")
            evaluate(a, state["model"], golden, tape)
        # Over the 3 MB / 2 MB aims: the augmented views, chain starts and SGLD noise of every step
        # (~0.6 MB a step in float64) are all injected; see README.md.
        recording.finish(golden, tape, a.precision, out, 4_000_000 if a.precision == "float64" else 2_600_000)


def evaluate(a, model, golden, tape):
    """The official OOD score (`JointModel.compute_ood_scores`, as test_ood.py's OODEvaluation calls it,
    model.eval()) and the network outputs on a fixed CIFAR-10 test batch, with the current and EMA weights."""
    x, y = recording.cifar10_tensors("test", range(a.batch), center=False)
    golden.add("eval/x", x)
    golden.add("eval/y", y)
    model.eval()
    tape.step = "eval"
    with torch.no_grad():
        f, z = model.ebm(x)
        golden.add("eval/ebm_f", f)
        golden.add("eval/ebm_z", z)
        golden.add("eval/energy", model.energy_fn(x))
        golden.add("eval/encoder_y", model.encoder(x))
        golden.add("eval/ood_score", model.compute_ood_scores(x))  # ebm_augmentation output is a draw
        f, z = model.ema_ebm(x)
        golden.add("eval/ema_ebm_f", f)
        golden.add("eval/ema_ebm_z", z)
        golden.add("eval/ema_encoder_y", model.ema_encoder(x))
    tape.step = None


if __name__ == "__main__":
    main()
