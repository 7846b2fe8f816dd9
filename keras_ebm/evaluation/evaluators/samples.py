"""Samples of the restored trainer (a PNG grid and an npz under `<output_dir>/samples`) and / or
samples read from an npz: what the evaluators that score samples use (`ctx.samples`).

gin (eval.py flag): `samples.num_samples` (--samples), `steps` (--sample_steps), `sweeps`
(--sample_sweeps), `from_buffer` (--sample_from_buffer), `conditional` (--conditional),
`batch_size` (--sample_batch_size), `class_latent_examples` (--class_latent_examples), `npz`
(--samples_npz).
"""

from __future__ import annotations

import os

import numpy as np

from keras_ebm.evaluation import registry


@registry.register("samples")
class Samples(registry.Evaluator):
    def __init__(
        self,
        num_samples: int = 0,
        steps: int | None = None,
        sweeps: int | None = None,
        from_buffer: bool = False,
        conditional: bool = False,
        batch_size: int | None = None,
        class_latent_examples: int = 1000,
        npz: str | os.PathLike | None = None,
    ) -> None:
        self.num_samples, self.steps, self.sweeps = num_samples, steps, sweeps
        self.from_buffer, self.conditional, self.batch_size = from_buffer, conditional, batch_size
        self.class_latent_examples, self.npz = class_latent_examples, npz

    @property
    def needs_model(self) -> bool:
        return bool(self.num_samples)

    def run(self, ctx: registry.EvalContext) -> None:
        ctx.samples  # noqa: B018  (drawn here unless an evaluator before asked for them)

    def collect(self, ctx: registry.EvalContext) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """`{name: (uint8 images, labels or None)}`: the drawn samples, then the npz's."""
        samples = {}
        if self.num_samples:
            name, images, labels = self.draw(ctx)
            samples[name] = (images, labels)
        if self.npz:
            with np.load(self.npz) as f:
                samples[os.path.basename(self.npz)[: -len(".npz")]] = (
                    f["images"],
                    f["labels"] if "labels" in f.files else None,
                )
        return samples

    def draw(self, ctx: registry.EvalContext) -> tuple[str, np.ndarray, np.ndarray | None]:
        """Draws with the trainer's sampler; returns `(name, images, labels)`."""
        from keras_ebm import generation

        model = ctx.model
        if not model.is_generative:
            raise registry.UsageError(f"{type(model).__name__} is not a generative model: it has no sampler.")
        name = None
        if self.sweeps:
            if not model.conditions_on_latents:  # the sweeps protocol is CLEL's
                raise registry.UsageError(f"--sample_sweeps is CLEL's FID protocol; {type(model).__name__} has none.")
            model.sample_sweeps = self.sweeps
            steps = self.steps if self.steps is not None else model.sampler.n_steps
            kind = "conditional" if self.conditional else "buffer" if self.from_buffer else "fresh"
            name = f"{kind}_{self.sweeps}x{steps}steps"
        labelled = None
        if self.conditional and model.conditions_on_latents:
            from keras_ebm.data import to_pixel_range

            x, y = ctx.test_set(self.class_latent_examples)
            labelled = (to_pixel_range(x, model.pixel_range), y)
        png = generation.generate_samples(
            model,
            os.path.join(ctx.output_dir, "samples"),
            self.num_samples,
            n_steps=self.steps,
            from_buffer=self.from_buffer,
            conditional=self.conditional,
            batch_size=self.batch_size,
            labelled_data=labelled,
            name=name,
        )
        with np.load(png[: -len(".png")] + ".npz") as f:
            return os.path.basename(png)[: -len(".png")], f["images"], f["labels"]
