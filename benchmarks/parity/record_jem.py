"""Record the official JEM step (wgrathwohl/JEM 3d01161, train_wrn_ebm.py) into a golden file.

    /work/torchvenv/bin/python benchmarks/parity/record_jem.py --official /work/official/JEM \
        --precision float64            # and --precision float32

Runs the official `main()` unchanged with its own parser's options (small settings below): the
data loaders are replaced by fixed CIFAR-10 batches, torchvision/tqdm/sklearn are stubbed, CUDA is
off, checkpoints are not written; `OptimizerTap` stops `main()` after `--steps` updates. Then the
official evaluation code (eval_wrn_ebm.py `OODAUC`, score functions px / py / pxgrad) runs on a
fixed test batch (CIFAR-10 test images as in-distribution, DTD textures as OOD).
"""

import argparse
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import official_run  # noqa: E402
import recording  # noqa: E402

REPO, COMMIT = "wgrathwohl/JEM", "3d01161"
BATCH, STEPS = 8, 3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default="/work/official/JEM")
    ap.add_argument("--precision", choices=["float64", "float32"], default="float64")
    ap.add_argument("--norm", default=None, choices=[None, "batch"])
    ap.add_argument("--out", default=None)
    opts = ap.parse_args()
    suffix = "" if opts.norm is None else "_bn"
    out = opts.out or os.path.join(HERE, "..", "..", "tests", "data", "parity", f"jem{suffix}_{opts.precision}.npz")
    auc_calls = []
    official_run.stub_modules(auc_calls)
    recording.force_cpu()
    sys.path.insert(0, opts.official)
    import torch

    parser = official_run.official_parser(os.path.join(opts.official, "train_wrn_ebm.py"))
    save_dir = tempfile.mkdtemp(prefix="record_jem_")
    argv = [
        "--depth",
        "10",
        "--width",
        "1",
        "--batch_size",
        str(BATCH),
        "--buffer_size",
        "20",
        "--n_steps",
        "2",
        "--reinit_freq",
        "0.25",
        "--lr",
        "1e-3",
        "--n_epochs",
        "1",
        "--save_dir",
        save_dir,
        "--print_every",
        "1",
        "--sgld_std",
        "0.01",
    ]
    if opts.norm:
        argv += ["--norm", opts.norm]
    args = parser.parse_args(argv)
    args.n_classes = 10  # as the script's __main__ does for cifar10
    dtype = np.float64 if opts.precision == "float64" else np.float32

    import train_wrn_ebm as T

    # Fixed batches: x_p_d from dload_train, (x_lab, y_lab) from dload_train_labeled.
    x_u8, y_all = official_run.fixed_images("train", 0, 2 * BATCH * STEPS)
    batches_px = [
        (
            torch.tensor(official_run.to_official(x_u8[i * BATCH : (i + 1) * BATCH], dtype)),
            torch.tensor(y_all[i * BATCH : (i + 1) * BATCH]),
        )
        for i in range(STEPS)
    ]
    off = BATCH * STEPS
    batches_lab = [
        (
            torch.tensor(official_run.to_official(x_u8[off + i * BATCH : off + (i + 1) * BATCH], dtype)),
            torch.tensor(y_all[off + i * BATCH : off + (i + 1) * BATCH]),
        )
        for i in range(STEPS)
    ]
    T.get_data = lambda a: (list(batches_px), iter(batches_lab), [], [])
    T.checkpoint = lambda *a, **k: None

    golden = recording.Golden(
        repo=REPO,
        commit=COMMIT,
        recorder="benchmarks/parity/record_jem.py",
        precision=opts.precision,
        steps=STEPS,
        settings=vars(args),
        notes=(
            "init_uniform rows not chosen by the reinit mask are stored as 0 "
            "(they do not enter the step); probe/ keys hold <= 256 evenly "
            "spaced entries of the flattened tensor"
        ),
    )
    tape = recording.RandomTape([opts.official])
    held = {}
    original_get = T.get_model_and_buffer

    def get_model_and_buffer(*a, **k):
        f, buffer = original_get(*a, **k)
        held["f"], held["buffer"] = f, buffer
        golden.add_all("init", dict(f.state_dict().items()))
        golden.add("init_state/replay_buffer", buffer)
        tape.step = 0
        return f, buffer

    T.get_model_and_buffer = get_model_and_buffer
    original_adam = torch.optim.Adam
    per_step = {}

    def make_adam(*a, **k):
        opt = original_adam(*a, **k)
        names = {id(p): n for n, p in held["f"].named_parameters()}

        def before(step):
            loc = recording.frame_locals("main")
            for name in ("l_p_x", "l_p_y_given_x", "L", "fp", "fq"):
                if name in loc:
                    golden.add(f"step/{step}/loss/{name}", loc[name])
            per_step[step] = {"x_q": recording.to_numpy(loc["x_q"])}
            if step == 0:
                for n, p in held["f"].named_parameters():
                    if p.grad is not None:  # f.linear and energy_output are never used by CCF
                        golden.add(f"step/0/grad/{n}", p.grad)

        def after(step):
            per_step[step]["param"] = {n: recording.to_numpy(v) for n, v in held["f"].state_dict().items()}
            per_step[step]["opt"] = recording.optimizer_state(opt, names)
            per_step[step]["buffer"] = recording.to_numpy(held["buffer"])

        recording.OptimizerTap(opt, STEPS, before=before, after=after, tape=tape)
        return opt

    torch.optim.Adam = make_adam
    with recording.float64_mode(opts.precision == "float64"), tape:
        try:
            T.main(args)
        except recording.StopRecording:
            pass
    torch.optim.Adam = original_adam

    for k in range(STEPS):
        golden.add(f"batch/{k}/x_p_d", batches_px[k][0])
        golden.add(f"batch/{k}/y_p_d", batches_px[k][1])
        golden.add(f"batch/{k}/x_lab", batches_lab[k][0])
        golden.add(f"batch/{k}/y_lab", batches_lab[k][1])
    # Draws: zero the fresh-uniform rows the reinit mask does not pick (they do not enter the step).
    by_step = {}
    for step, name, site, value in tape.draws:
        by_step.setdefault(step, []).append([step, name, site, value])
    for _step, draws in by_step.items():
        for i, (_, name, site, value) in enumerate(draws):
            if name == "Tensor.uniform_" and site.endswith("init_random"):
                nxt = draws[i + 1]
                assert nxt[1] == "torch.rand", nxt[:3]
                mask = nxt[3] < args.reinit_freq
                draws[i][3] = np.where(mask[:, None, None, None], value, 0).astype(value.dtype)
    tape.draws = [d for s in sorted(by_step, key=str) for d in by_step[s]]
    tape.to_golden(golden)
    last = STEPS - 1
    for k in range(STEPS):
        golden.add(f"step/{k}/state/x_q", per_step[k]["x_q"]) if k == last else golden.add(
            f"step/{k}/probe/state/x_q", official_run.probe(per_step[k]["x_q"])
        )
        for n, v in per_step[k]["param"].items():  # (the eval logits check the final weights in full)
            golden.add(f"step/{k}/probe/param/{n}", official_run.probe(v))
        for n, v in per_step[k]["opt"].items():
            if n == "lr" or n.endswith("/step"):
                golden.add(f"step/{k}/opt/{n}", v)
            else:
                golden.add(f"step/{k}/probe/opt/{n}", official_run.probe(v))
        golden.add(f"step/{k}/probe/state/replay_buffer", official_run.probe(per_step[k]["buffer"]))

    # Official evaluation (eval_wrn_ebm.py) on a fixed test batch with the final weights.
    import eval_wrn_ebm as E

    eval_parser = official_run.official_parser(os.path.join(opts.official, "eval_wrn_ebm.py"))
    x_test, y_test = official_run.fixed_images("test", 0, BATCH)
    x_ood = official_run.dtd_images(BATCH)
    x_eval = torch.tensor(official_run.to_official(x_test, dtype))
    x_fake = torch.tensor(official_run.to_official(x_ood, dtype))
    golden.add("eval/x", x_eval)
    golden.add("eval/y", y_test)
    golden.add("eval/x_ood", x_fake)
    with recording.float64_mode(opts.precision == "float64"):
        ef = E.CCF(args.depth, args.width, args.norm)
        ef.load_state_dict(held["f"].state_dict())
        golden.add("eval/logits", ef.classify(x_eval))
        loaders = []
        E.DataLoader = lambda dset, **k: loaders.pop(0)
        for score_fn in ("px", "py", "pxgrad"):
            eargs = eval_parser.parse_args(
                ["--score_fn", score_fn, "--ood_dataset", "svhn", "--depth", "10", "--width", "1"]
                + (["--norm", opts.norm] if opts.norm else [])
            )
            loaders[:] = [[(x_eval, torch.tensor(y_test))], [(x_fake, torch.zeros(BATCH, dtype=torch.long))]]
            E.OODAUC(ef, eargs, "cpu")
            call = auc_calls.pop()
            golden.add(f"eval/{score_fn}/scores_in", call["scores"][:BATCH])
            golden.add(f"eval/{score_fn}/scores_ood", call["scores"][BATCH:])
            golden.add(f"eval/{score_fn}/auroc", call["auc"])
    golden.save(out, max_bytes=int(os.environ.get("PARITY_MAX_BYTES", 4_500_000)))


if __name__ == "__main__":
    main()
