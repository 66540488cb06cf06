"""What every outer method shares within one run of the loop: the run's set-up (device,
renderer, photos in the scene's class order, starting psi, photographic effects, the method's
strategy) and the building blocks the strategies call (render, photograph, train, val_loss,
val_map). The sequence that uses them is optimizer.loop."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from ultralytics.nn.tasks import DetectionModel

from detector.datasets import LabelledSet
from detector.evaluate import DetectionMetrics, evaluate
from detector.losses import BatchNormMode
from detector.targets import ImageBatch
from detector.train import FinetuneState, finetune
from optimizer.config import OptimizeConfig, Progress
from optimizer.divergence import check_finite
from optimizer.final_training import detector_config
from optimizer.priors import starting_psi_config
from optimizer.psi import OptimizerError, Psi, PsiNoise
from optimizer.result import OptimizeResult
from optimizer.seeds import generator
from optimizer.strategies import Strategy, make_strategy
from optimizer.validation import validation_loss_and_gradient
from renderer.photometric import photograph
from renderer.scene_renderer import SceneRenderer


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptimizerError("OptimizeConfig.device: 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)


def _remap_classes(dataset: LabelledSet, class_names: list[str], what: str) -> LabelledSet:
    """``dataset`` with class ids in the scene's order (matched by name)."""
    if dataset.class_names == class_names:
        return dataset
    missing = sorted(set(dataset.class_names) - set(class_names))
    if missing:
        raise OptimizerError(f"{dataset.source}: the {what} set has classes {missing} that the scene lacks ({class_names})")
    mapping = torch.tensor([class_names.index(name) for name in dataset.class_names], dtype=torch.long)
    images = [copy.copy(item) for item in dataset.images]
    for item in images:
        item.classes = mapping[item.classes]
    return LabelledSet(images, list(class_names), dataset.source)


class LoopContext:
    """One run's shared state: set up here; ``psi``, ``detector``, ``finetune_state``,
    ``history`` and ``images_rendered`` are given by the loop (optimizer.loop._Loop) when it
    starts or resumes, and updated by it and its strategy."""

    psi: Psi
    detector: DetectionModel
    finetune_state: FinetuneState
    history: list[dict]
    """One record per completed outer iteration."""
    images_rendered: int

    def __init__(
        self,
        config: OptimizeConfig,
        renderer: SceneRenderer,
        class_names: list[str],
        val_set: LabelledSet,
        test_set: LabelledSet | None,
        out_dir: Path,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], bool] | None,
        progress_bar: bool,
        warmup_cache: Path | None = None,
        test_held_out: bool = False,
    ) -> None:
        self.config = config
        self.test_held_out = test_held_out
        self.warmup_cache = warmup_cache
        self.renderer = renderer
        self.class_names = list(class_names)
        if len(self.class_names) != len(renderer.fields):
            raise OptimizerError(f"{len(class_names)} class names for a scene of {len(renderer.fields)} objects")
        self.val_set = _remap_classes(val_set, self.class_names, "validation")
        self.test_set = _remap_classes(test_set, self.class_names, "test") if test_set is not None else None
        self.out_dir = out_dir
        self.on_progress = on_progress or (lambda progress: None)
        self.should_stop = should_stop or (lambda: False)
        self.progress_bar = progress_bar
        self.device = resolve_device(config.device)

        for radiance_field in renderer.fields:
            radiance_field.requires_grad_(False)
            radiance_field.to(self.device)
        # issue 23: the starting psi from the validation photos (optimizer.priors; None: off).
        self.psi_config, self.priors = starting_psi_config(config, renderer, self.class_names, self.val_set)
        self.photometric = config.scene.photometric_config()
        self.detector_config = detector_config(config, self.class_names)
        self.val_batch = self.val_set.batch(config.detector.image_size).to(self.device)
        self.target_azimuth = (config.psi.oracle or {}).get("azimuth_bin_probs")
        self.strategy: Strategy = make_strategy(self)
        """The outer method (config.outer.method): draws, learns, trains; last, so that it can fail
        on the set-up above before any work."""

    def emit(self, stage: str, iteration: int, total: int, **kwargs) -> None:
        self.on_progress(Progress(stage=stage, iteration=iteration, total=total, **kwargs))

    def render(self, noise: PsiNoise, iteration: int, psi: Psi | None = None, round_index: int = 0) -> ImageBatch:
        """Render the recorded samples without gradients; labels from the renderer.
        ``round_index`` tells apart the renders of one iteration (the warm-up's rounds)."""
        with torch.no_grad():
            out = self.renderer.render((psi or self.psi).replay(noise), self.config.detector.image_size)
            step = self.renderer.config.chunk_images
            images = torch.cat([self.photograph(out.rgb[start : start + step].clamp(0, 1), iteration, round_index, start)
                                for start in range(0, noise.batch_size, step)])
        check_finite(images, "a rendered image", iteration, "the renderer produced NaN or infinite pixels")
        self.images_rendered += noise.batch_size
        return ImageBatch(images, out.boxes, out.classes, out.keep)

    def photograph(self, images: Tensor, iteration: int, round_index: int, start: int) -> Tensor:
        """The differentiable photographic effects on the loop's images from row ``start`` on
        (PhotometricConfig.in_loop; else the images as they are), drawn per renderer chunk so
        that the pathwise re-render of a chunk gets what the detector saw."""
        if self.photometric is None or not self.photometric.in_loop:
            return images
        effects = generator(self.config.seed, iteration, "photometric", round_index, start)
        return photograph(images, self.photometric, effects, differentiable_only=True)

    def train(self, model: DetectionModel, batch: ImageBatch, steps: int, state: FinetuneState, iteration: int) -> FinetuneState:
        """Fine-tune ``model`` on ``batch`` for ``steps`` inner steps from the inner optimiser's
        ``state`` (BatchNorm statistics updated, as in plain training); its new state."""
        config = self.config
        result = finetune(
            model, batch.images, batch.targets(), steps, config.detector.inner_learning_rate, BatchNormMode.UPDATE,
            batch_size=config.detector.inner_batch_size, optimizer_name=config.detector.inner_optimizer,
            generator=generator(config.seed, iteration, "finetune"), optimizer_state=state, progress=False,
        )
        for step, loss in enumerate(result.losses[len(result.losses) - steps :]):
            check_finite(loss, f"the detector's training loss at inner step {step}", iteration,
                         "lower inner_learning_rate or check the rendered images")
        return result

    def val_loss(self, model: DetectionModel, iteration: int) -> float:
        """The validation loss of ``model`` (HYPERGRADIENT_BN, no gradient)."""
        loss, _ = validation_loss_and_gradient(model, self.val_batch, self.config.detector.val_batch_size, False)
        check_finite(loss, "the validation loss", iteration, "the detector diverged")
        return loss

    def val_map(self, model: DetectionModel, iteration: int, always: bool = False) -> DetectionMetrics | None:
        """Validation mAP every ``val_map_every`` iterations (or ``always``)."""
        every = self.config.detector.val_map_every
        if not always and (not every or (iteration + 1) % every):
            return None
        return evaluate(model, self.val_set, self.config.detector.image_size, progress=False)

    def cancelled(self, iteration: int) -> OptimizeResult:
        self.emit("outer", iteration, self.config.budget.outer_iterations, psi=self.psi.snapshot(), message="cancelled")
        return OptimizeResult(
            status="cancelled", out_dir=self.out_dir, iterations_done=len(self.history), psi=self.psi.snapshot(),
            history=self.history, images_rendered=self.images_rendered,
        )
