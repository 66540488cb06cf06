"""The Neural-Sim closed loop: learn psi so that the detector trained on its renders does best
on the user's validation set, then render the final dataset and train the final detector.

One outer iteration ``t`` (every method goes through it; see :mod:`optimizer.baselines`):

1. draw ``budget.images_per_iteration`` scenes from psi (the random-search candidate) with recorded
   noise, render them (no gradient);
2. neural-sim only, before the detector sees these images: the validation loss's gradient
   ``g`` w.r.t. the warm-started detector's weights; ``u = (H + damping)^-1 g`` with ``H`` the
   Hessian of the training loss on the new images (identity, Neumann or CG); the estimator's
   outer gradient (pathwise: replay the same samples with gradients, render again in chunks and
   push ``-d/dx [u . dL_train/dtheta]`` through the renderer; score: per-image alignments
   ``u . dL_i/dtheta`` as rewards). Every gradient here uses ``BatchNormMode.BATCH``: the
   issue's measurement found the per-image alignment informative only with batch statistics.
   The ``lookahead`` estimator instead renders the scenes at every azimuth bin, fine-tunes a
   copy of the detector on each bin's images and scores it on the validation set, and the
   loop detector then trains on the images resampled in proportion to psi's bin probabilities.
   With ``enumerate_bins`` the score function's azimuth part renders its scenes at every bin
   the same way and takes the exact expectation of the bins' mean per-image rewards; the loop
   detector trains on the resample too. With ``alignment_objective="appearance"`` the bins
   instead descend the MMD between the crops of psi's objects and the validation objects'
   (:mod:`optimizer.appearance`), which needs no detector gradient.
   Then an Adam step on psi with an entropy bonus on the azimuth bins (against collapse onto
   one bin), after scaling the outer gradient to unit norm, and a temperature-schedule step;
3. fine-tune a detector on the images (``BatchNormMode.UPDATE``, plain training): the loop
   detector, warm-started, for neural-sim and the fixed baselines; a copy of the reference
   detector for random search and REINFORCE, so that each candidate or policy sample is scored
   from the same start (Learning-to-Simulate trains a fresh model per reward);
4. the validation loss (and mAP) of the fine-tuned detector; random search keeps the best
   candidate, REINFORCE takes a score-function step with that score as the reward;
5. record, checkpoint (atomically), report progress.

Randomness: every draw comes from a generator seeded by (seed, iteration, purpose), so an
iteration depends only on the state the previous one left, which the checkpoint holds; a run
resumed from its checkpoint reproduces the uninterrupted one bit for bit (same machine and
thread count).

The final stage renders ``budget.final_images`` from the learned psi (:func:`optimizer.dataset.render_dataset`),
trains the final detector with Ultralytics' trainer from the initial weights or the warmed-up
detector (final.init), evaluates it on the target test (and validation) set and writes
``report.json``, ``psi.json``, ``detector.pt`` and plots.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm
from ultralytics.nn.tasks import DetectionModel

from detector.datasets import LabelledSet, load_dataset
from detector.evaluate import DetectionMetrics, evaluate
from detector.losses import (
    BatchNormMode,
    detection_loss,
    trainable_parameters,
)
from detector.model import DetectorConfig, build_detector, load_detector, save_detector
from detector.targets import ImageBatch, UltralyticsTargets
from detector.train import FinetuneState, finetune, train_on_dataset
from optimizer.appearance import AppearanceStatistics, crop_bandwidth, object_crops
from optimizer.baselines import azimuth_total_variation, initial_psi, random_candidate
from optimizer.best_detector import best_iteration, keep_if_best
from optimizer.checkpoint import LoopState, load_checkpoint, save_checkpoint
from optimizer.config import OptimizeConfig, Progress
from optimizer.dataset import render_dataset
from optimizer.estimators import (
    MixtureStatistics,
    MovingAverageBaseline,
    alignment_rewards,
    enumerated_bin_gradient,
    estimator_parts,
    outer_gradient,
    per_sample_gradient_gram,
    per_sample_gradient_norms,
    score_function_surrogate,
)
from optimizer.hessian import (
    exact_hvp,
    finite_difference_hvp,
    hessian_mask,
    per_image_dots,
    per_image_dots_and_image_gradient,
    solve_direction,
    training_gradient,
)
from optimizer.hypergradient import mixed_grad_from_gradients, pathwise_backward
from optimizer.priors import starting_psi_config
from optimizer.psi import PER_CLASS_PARTS, OptimizerError, Psi, PsiNoise
from optimizer.final_size import final_image_shape
from optimizer.real_training import compare_with_real_only, final_training_data, photo_backgrounds, train_real_only
from optimizer.uniform_baseline import MIN_PHOTOS_TO_HOLD_OUT, hold_out, psi_before_after, uniform_baseline
from optimizer.report import plot_history, plot_psi_before_after, sample_paths, save_sample_images, write_json_atomic
from renderer.photometric import PhotometricConfig, photograph
from renderer.resting import RestingConfig, field_pose_table
from renderer.scene_renderer import SceneRenderer, SceneRendererConfig
from renderer.scene_spec import SceneSpec, load_scene, read_scene_spec

Status = Literal["completed", "cancelled"]
HYPERGRADIENT_BN = BatchNormMode.BATCH
"""BatchNorm mode of every gradient in the hypergradient (validation gradient, Hessian, mixed
derivative, per-image alignment) and of the validation loss the baselines are scored with."""
_PURPOSES = ("render", "finetune", "candidate", "warmup", "final", "resample", "lookahead", "photometric")
WARMUP_DETECTOR = "warmup_detector.pt"
"""The detector after the warm-up, in the run folder when final.init is 'warmup'."""
class TrainingDivergedError(RuntimeError):
    """A loss, gradient, image or psi value became NaN or infinite during the loop."""


@dataclass
class OptimizeResult:
    """What :func:`run_optimization` leaves, besides the files in ``out_dir``."""

    status: Status
    out_dir: Path
    iterations_done: int
    psi: dict
    """Psi.snapshot() of the learned (or fixed) psi."""
    history: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    """Final metrics: {"test": {...}, "val": {...}} with map50_95, map50, per_class_ap (empty
    when cancelled or without a final stage)."""
    images_rendered: int = 0
    """Every image rendered: outer iterations (warm-up included) and the final dataset."""
    report: Path | None = None
    detector: Path | None = None
    dataset: Path | None = None


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu' or 'cuda'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptimizerError("OptimizeConfig.device: 'cuda' asked for, but torch sees no CUDA device")
    return torch.device(name)


def job_renderer(config: OptimizeConfig, spec: SceneSpec, val_set: LabelledSet) -> SceneRenderer:
    """The renderer a job renders with: the scene's objects on its backgrounds plus those
    harvested from the labelled photos (renderer.harvest), objects resting in their stable poses
    (renderer.resting), as ``config`` asks."""
    fields, backgrounds = load_scene(spec, photo_backgrounds(val_set) if config.scene.harvest_backgrounds else None)
    resting = RestingConfig(canonical_pose_share=config.scene.canonical_pose_share)
    poses = [field_pose_table(f, resting) for f in fields] if config.scene.resting_poses else None
    return SceneRenderer(SceneRendererConfig(fov_deg=spec.fov_deg), fields, backgrounds, poses)


def run_optimization(
    config: OptimizeConfig,
    out_dir: Path,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress_bar: bool = True,
) -> OptimizeResult:
    """Run a closed-loop job: load its scene and target sets, then :func:`run_loop`.

    ``out_dir`` receives everything (see :func:`run_loop`); when it already holds a checkpoint
    of the same config, the run resumes from it.
    """
    config.validate()
    if config.targets.val is None:
        raise OptimizerError("OptimizeConfig.targets.val: the loop needs a labelled validation set (COCO json or YOLO folder)")
    val_set = load_dataset(Path(config.targets.val))
    test_set = load_dataset(Path(config.targets.test)) if config.targets.test is not None else None
    held_out = test_set is None and config.final.uniform_baseline and config.budget.final_images > 0
    if held_out:  # the uniform baseline needs photos the run never sees (optimizer.uniform_baseline)
        val_set, test_set = hold_out(val_set, config.seed)
        held_out = test_set is not None
    spec = read_scene_spec(config.scene.spec)
    renderer = job_renderer(config, spec, val_set)
    return run_loop(
        config, renderer, spec.class_names, val_set, test_set, out_dir,
        on_progress=on_progress, should_stop=should_stop, progress_bar=progress_bar, test_held_out=held_out,
    )


def run_loop(
    config: OptimizeConfig,
    renderer: SceneRenderer,
    class_names: list[str],
    val_set: LabelledSet,
    test_set: LabelledSet | None,
    out_dir: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress_bar: bool = True,
    warmup_cache: Path | None = None,
    test_held_out: bool = False,
) -> OptimizeResult:
    """The loop on already-loaded objects (``config.scene.spec`` and ``config.targets`` are not
    read). The renderer's fields are frozen and moved to the run's device.

    ``warmup_cache``: a folder shared by runs with the same renderer, in which the warm-up's
    result (detector, inner optimiser state, torch RNG state) is kept under a key of the
    settings it reads (OptimizeConfig.warmup_settings) and torch's thread count: a run whose warm-up is
    there starts from it instead of training it again, and continues exactly as if it had
    (tested). ``test_held_out``: ``test_set`` is validation photos held out of the run
    (run_optimization without a test set), as the report says.

    Writes to ``out_dir``: ``config.json``, ``checkpoint.pt`` (after every outer iteration),
    ``samples/`` (images with boxes), and after the final stage ``dataset/``, ``final_data/`` (the
    final training's folder: the dataset plus the photos), ``final_train/``, ``detector.pt``,
    ``real_only/`` (the real-only baseline, with a test set), ``uniform_baseline/``
    (optimizer.uniform_baseline), ``psi.json``, ``report.json`` and
    ``plots/``. ``should_stop()`` is asked before every outer iteration, between final stages and
    after every batch of the final training; when it says yes the run returns
    with status 'cancelled' (the checkpoint is current, so calling again resumes).
    """
    config.validate()
    loop = _Loop(config, renderer, class_names, val_set, test_set, Path(out_dir), on_progress, should_stop, progress_bar,
                 warmup_cache, test_held_out)
    return loop.run()


# ------------------------------------------------------------------------------------------


def psi_step_scale(iteration: int, warmup_iterations: int) -> float:
    """Fraction of psi.learning_rate used at outer ``iteration`` (0-based): a linear warm-up over
    the first ``warmup_iterations``, then 1."""
    return min(1.0, (iteration + 1) / (warmup_iterations + 1))


def _seed(seed: int, iteration: int, purpose: str, *more: int) -> int:
    """An independent seed for each (run seed, iteration, purpose, further keys)."""
    return int(np.random.SeedSequence([seed, iteration + 1, _PURPOSES.index(purpose), *more]).generate_state(1)[0])


def _generator(seed: int, iteration: int, purpose: str, *more: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(seed, iteration, purpose, *more))


def photometric_config(config: OptimizeConfig) -> PhotometricConfig | None:
    """The job's photographic effects (config.scene.photometric: PhotometricConfig overrides), or None."""
    return config.scene.photometric_config()


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


def _check_finite(value: float | Tensor, what: str, iteration: int, hint: str) -> None:
    finite = math.isfinite(value) if isinstance(value, float) else bool(torch.isfinite(value).all())
    if not finite:
        raise TrainingDivergedError(f"outer iteration {iteration}: {what} is not finite; {hint}")


def validation_loss_and_gradient(
    model: DetectionModel, batch: ImageBatch, chunk: int, with_gradient: bool
) -> tuple[float, list[Tensor] | None]:
    """Mean validation loss over ``batch`` (in near-equal chunks of at most ``chunk`` images,
    BatchNorm on each chunk's statistics) and, if asked, its gradient w.r.t. the detector's
    trainable parameters."""
    count = batch.images.shape[0]
    parameters = trainable_parameters(model)
    total = 0.0
    gradient = [torch.zeros_like(p) for p in parameters] if with_gradient else None
    for rows in torch.arange(count).tensor_split(math.ceil(count / chunk)):
        part = batch.index(rows.to(batch.images.device))
        weight = len(rows) / count
        if with_gradient:
            loss = detection_loss(model, part.images, part.targets(), HYPERGRADIENT_BN)
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            for total_grad, grad in zip(gradient, grads):
                if grad is not None:
                    total_grad.add_(grad, alpha=weight)
        else:
            with torch.no_grad():
                loss = detection_loss(model, part.images, part.targets(), HYPERGRADIENT_BN)
        total += weight * loss.item()
    return total, gradient


def inverse_hessian_direction(
    config: OptimizeConfig,
    model: DetectionModel,
    images: Float[Tensor, "B 3 S S"],
    targets: UltralyticsTargets,
    val_grad: list[Tensor],
) -> tuple[list[Tensor], list[Tensor], Tensor, bool]:
    """``u = (H + damping)^-1 val_grad`` by config.hypergradient.inverse_hessian, ``H`` the Hessian of the
    training loss on ``images`` (BatchNorm on batch statistics, HYPERGRADIENT_BN) over the
    weights config.hypergradient.hessian_layers names (optimizer.hessian; u is zero elsewhere), its products
    taken as config.hypergradient.hessian_product says. Returns u, the training gradient (its graph kept: the
    pathwise part and the per-image alignments differentiate it again), its per-image weights
    (optimizer.hessian.per_image_dots) and whether u fell back to val_grad: CG that meets
    non-positive curvature along the validation gradient itself stays at 0, which would leave
    psi without a signal."""
    mask = hessian_mask(model, config.hypergradient.hessian_layers)
    settings = config.hypergradient
    solver = dict(method=settings.inverse_hessian, steps=settings.inverse_hessian_steps, damping=settings.damping,
                  scale=settings.neumann_scale)
    if config.hypergradient.hessian_product == "finite-difference":
        # Before the training gradient's graph is built: these products step the weights in place.
        hvp = finite_difference_hvp(model, images, targets, HYPERGRADIENT_BN, mask)
        u = solve_direction(hvp, val_grad, mask, **solver)
        train_grad, image_weights = training_gradient(model, images, targets, HYPERGRADIENT_BN, mask)
    else:
        train_grad, image_weights = training_gradient(model, images, targets, HYPERGRADIENT_BN, mask)
        u = solve_direction(exact_hvp(model, train_grad, mask), val_grad, mask, **solver)
    fell_back = not any(bool(x.any()) for x in u)
    if fell_back:
        u = [g.clone() if mask is None or mask[i] else torch.zeros_like(g) for i, g in enumerate(val_grad)]
    return u, train_grad, image_weights, fell_back


class _Stopped(Exception):
    """``should_stop()`` said yes inside a stage (raised to leave Ultralytics' trainer)."""


class _Loop:
    """One run of :func:`run_loop` (the state between its steps)."""

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
        self.start_time = time.perf_counter()

        for radiance_field in renderer.fields:
            radiance_field.requires_grad_(False)
            radiance_field.to(self.device)
        # issue 23: the starting psi from the validation photos (optimizer.priors; None: off).
        self.psi_config, self.priors = starting_psi_config(config, renderer, self.class_names, self.val_set)
        self.photometric = photometric_config(config)
        self.learnable = set(config.psi.learnable)
        self.detector_config = detector_config(config, self.class_names)
        self.val_batch = self.val_set.batch(config.detector.image_size).to(self.device)
        self.target_azimuth = (config.psi.oracle or {}).get("azimuth_bin_probs")
        score_parts = estimator_parts(config.outer.estimator)[1] & self.learnable
        self.pose_group = config.outer.pose_group if config.outer.method == "neural-sim" and "azimuth" in score_parts else 1
        self.lookahead = config.outer.method == "neural-sim" and config.outer.estimator == "lookahead"
        self.enumerate_bins = (config.outer.method == "neural-sim" and config.outer.enumerate_bins
                               and "azimuth" in score_parts)
        self.every_bin = self.lookahead or self.enumerate_bins
        self.alignment_kept = self.parameters_aligned()
        if self.every_bin:
            self.pose_group = self.psi_config.azimuth_bins  # scenes that share all but the azimuth, one per bin
        self.by_appearance = self.enumerate_bins and config.outer.alignment_objective == "appearance"
        if self.by_appearance:
            self.val_crops, rows, slots = object_crops(self.val_batch.images, self.val_batch.boxes, self.val_batch.keep)
            self.val_crop_classes = self.val_batch.classes[rows, slots]
            self.appearance_bandwidth = crop_bandwidth(self.val_crops)  # fails here, before any work

    # ------------------------------------------------------------------ setup and resume

    def emit(self, stage: str, iteration: int, total: int, **kwargs) -> None:
        self.on_progress(Progress(stage=stage, iteration=iteration, total=total, **kwargs))

    def initial_state(self) -> LoopState:
        """Psi, detector and optimisers before the first outer iteration (after the warm-up)."""
        config = self.config
        self.psi = initial_psi(config, self.psi_config).to(self.device)
        self.psi_optimizer = self._psi_optimizer()
        self.detector = build_detector(self.detector_config).to(self.device)
        self.finetune_state = FinetuneState(optimizer={})
        self.baseline = MovingAverageBaseline(decay=config.outer.baseline_decay)
        self.mixture = MixtureStatistics(decay=config.outer.baseline_decay)
        self.appearance = self.new_appearance_statistics()
        self.best: dict | None = None
        self.history: list[dict] = []
        self.images_rendered = 0
        self.warm_up()
        if config.final.init == "warmup":
            # Before the first checkpoint, so a resumed run always finds it.
            partial = self.out_dir / f"{WARMUP_DETECTOR}.partial"
            save_detector(self.detector, partial).replace(self.out_dir / WARMUP_DETECTOR)
        val_loss, _ = validation_loss_and_gradient(self.detector, self.val_batch, config.detector.val_batch_size, False)
        return self.state(iteration=0, val_loss_start=val_loss)

    def warm_up(self) -> None:
        """Warm-up rounds of budget.inner_steps steps, each on fresh images (one batch for all steps
        would overfit it), from the config's initial psi whatever the method: every method of a
        seed then leaves the warm-up with the same detector (see final.init). Taken from the
        warm-up cache when it is there; stored in it otherwise."""
        config = self.config
        cached = None
        if self.warmup_cache is not None:
            settings = _plain(config.warmup_settings())
            settings["torch_threads"] = torch.get_num_threads()  # other thread counts round differently
            if self.priors is not None and self.priors["values"]:  # the warm-up's psi depends on the photos too
                settings["priors"] = self.priors["values"]
            key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
            cached = Path(self.warmup_cache) / f"warmup_{key}.pt"
            if cached.is_file():
                try:
                    saved = torch.load(cached, map_location="cpu", weights_only=True)
                    self.detector.load_state_dict(saved["detector"])
                    self.finetune_state = FinetuneState(**saved["finetune"])
                    torch.set_rng_state(saved["torch_rng"])
                except Exception as error:  # torch raises several types for foreign or damaged files
                    raise OptimizerError(f"{cached}: not a readable nerfsim warm-up ({error}); "
                                         "delete it to warm up again") from error
                self.images_rendered = self.warmup_images()
                return
        warmup_psi = Psi.uniform(self.psi_config).to(self.device)
        round_steps = config.budget.inner_steps or config.detector.warmup_steps
        for first in range(0, config.detector.warmup_steps, round_steps):
            noise = warmup_psi.sample(config.budget.images_per_iteration, _generator(config.seed, first, "warmup")).noise
            batch = self.render(noise, -1, warmup_psi, round_index=first)
            steps = min(round_steps, config.detector.warmup_steps - first)
            self.finetune_state = self.train(self.detector, batch, steps, self.finetune_state, -1)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")  # runs may share the folder
            torch.save({"detector": {k: v.detach().cpu() for k, v in self.detector.state_dict().items()},
                        "finetune": asdict(self.finetune_state), "torch_rng": torch.get_rng_state()}, partial)
            partial.replace(cached)

    def warmup_images(self) -> int:
        round_steps = self.config.budget.inner_steps or self.config.detector.warmup_steps
        if not round_steps:
            return 0
        return math.ceil(self.config.detector.warmup_steps / round_steps) * self.config.budget.images_per_iteration

    def _psi_optimizer(self) -> torch.optim.Adam | None:
        parameters = list(self.psi.parameters())
        return torch.optim.Adam(parameters, lr=self.config.psi.learning_rate) if parameters else None

    def state(self, iteration: int, val_loss_start: float | None) -> LoopState:
        def cpu(state: dict) -> dict:
            return {k: v.detach().cpu().clone() for k, v in state.items()}

        return LoopState(
            config=_plain(self.config.to_dict()),
            iteration=iteration,
            psi=cpu(self.psi.state_dict()),
            psi_optimizer=self.psi_optimizer.state_dict() if self.psi_optimizer is not None else {},
            detector=cpu(self.detector.state_dict()),
            finetune=asdict(self.finetune_state),
            baseline=asdict(self.baseline),
            mixture={k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in asdict(self.mixture).items()},
            appearance=asdict(self.appearance) if self.appearance is not None else None,
            best=self.best,
            val_loss_start=val_loss_start,
            torch_rng=torch.get_rng_state(),
            history=self.history,
        )

    def restore(self, state: LoopState) -> None:
        differing = self.config.differences(state.config)
        if differing:
            raise OptimizerError(
                f"{self.out_dir}: holds a run of another config (settings {differing} differ); "
                "use a new output folder or the same config"
            )
        self.psi = initial_psi(self.config, self.psi_config).to(self.device)
        self.psi.load_state_dict(state.psi)
        self.psi_optimizer = self._psi_optimizer()
        if self.psi_optimizer is not None:
            self.psi_optimizer.load_state_dict(state.psi_optimizer)
        self.detector = build_detector(self.detector_config).to(self.device)
        self.detector.load_state_dict(state.detector)
        self.finetune_state = FinetuneState(**state.finetune)
        self.baseline = MovingAverageBaseline(**state.baseline)
        self.mixture = (MixtureStatistics(**state.mixture) if state.mixture
                        else MixtureStatistics(decay=self.config.outer.baseline_decay))
        self.appearance = AppearanceStatistics(**state.appearance) if state.appearance else self.new_appearance_statistics()
        self.best = state.best
        self.history = list(state.history)
        self.images_rendered = self.history[-1]["images_rendered"] if self.history else self.warmup_images()
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)

    # ------------------------------------------------------------------ building blocks

    def render(self, noise: PsiNoise, iteration: int, psi: Psi | None = None, round_index: int = 0) -> ImageBatch:
        """Render the recorded samples without gradients; labels from the renderer.
        ``round_index`` tells apart the renders of one iteration (the warm-up's rounds)."""
        with torch.no_grad():
            out = self.renderer.render((psi or self.psi).replay(noise), self.config.detector.image_size)
            step = self.renderer.config.chunk_images
            images = torch.cat([self.photograph(out.rgb[start : start + step].clamp(0, 1), iteration, round_index, start)
                                for start in range(0, noise.batch_size, step)])
        _check_finite(images, "a rendered image", iteration, "the renderer produced NaN or infinite pixels")
        self.images_rendered += noise.batch_size
        return ImageBatch(images, out.boxes, out.classes, out.keep)

    def photograph(self, images: Tensor, iteration: int, round_index: int, start: int) -> Tensor:
        """The differentiable photographic effects on the loop's images from row ``start`` on
        (PhotometricConfig.in_loop; else the images as they are), drawn per renderer chunk so
        that the pathwise re-render of a chunk gets what the detector saw."""
        if self.photometric is None or not self.photometric.in_loop:
            return images
        generator = _generator(self.config.seed, iteration, "photometric", round_index, start)
        return photograph(images, self.photometric, generator, differentiable_only=True)

    def train(self, model: DetectionModel, batch: ImageBatch, steps: int, state: FinetuneState, iteration: int) -> FinetuneState:
        config = self.config
        result = finetune(
            model, batch.images, batch.targets(), steps, config.detector.inner_learning_rate, BatchNormMode.UPDATE,
            batch_size=config.detector.inner_batch_size, optimizer_name=config.detector.inner_optimizer,
            generator=_generator(config.seed, iteration, "finetune"), optimizer_state=state, progress=False,
        )
        for step, loss in enumerate(result.losses[len(result.losses) - steps :]):
            _check_finite(loss, f"the detector's training loss at inner step {step}", iteration,
                          "lower inner_learning_rate or check the rendered images")
        return result

    def val_loss(self, model: DetectionModel, iteration: int) -> float:
        loss, _ = validation_loss_and_gradient(model, self.val_batch, self.config.detector.val_batch_size, False)
        _check_finite(loss, "the validation loss", iteration, "the detector diverged")
        return loss

    def val_map(self, model: DetectionModel, iteration: int, always: bool = False) -> DetectionMetrics | None:
        """Validation mAP every ``val_map_every`` iterations (or ``always``)."""
        every = self.config.detector.val_map_every
        if not always and (not every or (iteration + 1) % every):
            return None
        return evaluate(model, self.val_set, self.config.detector.image_size, progress=False)

    def new_appearance_statistics(self) -> AppearanceStatistics | None:
        return AppearanceStatistics(bandwidth=self.appearance_bandwidth) if self.by_appearance else None

    def appearance_gradient(self, batch: ImageBatch, noise: PsiNoise) -> dict:
        """alignment_objective 'appearance': add this batch's crops to the statistics and put
        the MMD's derivative into the bin logits' .grad; returns diagnostics."""
        crops, rows, slots = object_crops(batch.images, batch.boxes, batch.keep)
        logits = self.psi.azimuth_logits
        self.appearance.update(crops, batch.classes[rows, slots], noise.azimuth_bin[rows, slots],
                               torch.div(rows, self.pose_group, rounding_mode="floor"))
        gradient, found = self.appearance.gradient(logits, self.val_crops, self.val_crop_classes)
        logits.grad = gradient if logits.grad is None else logits.grad + gradient
        return found

    def outer_step_direction(self, batch: ImageBatch, noise: PsiNoise, iteration: int) -> tuple[float, dict]:
        """Neural-sim: accumulate the estimated dL_val/dpsi into psi's .grad; returns the
        validation loss and diagnostics."""
        config = self.config
        model = self.detector
        pathwise, score = (parts & self.learnable for parts in estimator_parts(config.outer.estimator))
        diagnostics: dict = {}
        if self.by_appearance:
            diagnostics.update(self.appearance_gradient(batch, noise))
            score = score - {"azimuth"}
            if not (pathwise or score):  # nothing else learns: no detector gradient is needed
                return self.val_loss(model, iteration), diagnostics
        parameters = trainable_parameters(model)
        val_loss, val_grad = validation_loss_and_gradient(model, self.val_batch, config.detector.val_batch_size, True)
        _check_finite(val_loss, "the validation loss", iteration, "the detector diverged")
        targets = batch.targets()
        images = batch.images.detach().requires_grad_(True)
        u, train_grad, image_weights, fell_back = inverse_hessian_direction(config, model, images, targets, val_grad)
        diagnostics["inverse_hessian_fallback"] = fell_back
        _check_finite(torch.cat([x.reshape(-1) for x in u]), "the inverse-Hessian-vector product", iteration,
                      "raise damping, or use 'cg' or a smaller neumann_scale")
        alignment = None
        if pathwise:
            # -d/dx [u . dL_train/dtheta], then through the renderer chunk by chunk, so that the
            # renderer's graph never holds more than one chunk. The per-image alignments come
            # from the same double backward when they use the same u.
            if score and self.alignment_kept is None:
                alignment, image_grad = per_image_dots_and_image_gradient(train_grad, image_weights, u, images)
            else:
                image_grad = mixed_grad_from_gradients(train_grad, images)(u)[0]
            step = self.renderer.config.chunk_images
            for start in range(0, noise.batch_size, step):
                rows = slice(start, start + step)
                rgb = self.renderer.render(self.psi.replay(noise.index(rows), pathwise),
                                           config.detector.image_size).rgb.clamp(0, 1)
                rgb = self.photograph(rgb, iteration, 0, start)
                pathwise_backward(rgb, lambda _u, g=image_grad[rows]: [g], u)
        if score:
            if self.alignment_kept is not None:
                u = [x if keep else torch.zeros_like(x) for x, keep in zip(u, self.alignment_kept)]
                parameters = [p for p, keep in zip(parameters, self.alignment_kept) if keep]
            if alignment is None:
                alignment = per_image_dots(train_grad, image_weights, u)
            norms = gram = None
            if config.outer.alignment_normalisation == "cosine":
                losses = detection_loss(model, batch.images, targets, HYPERGRADIENT_BN, reduction="none")
                if config.outer.alignment_objective == "mixture":
                    gram = per_sample_gradient_gram(losses, parameters)
                    norms = gram.diagonal().sqrt()
                else:
                    norms = per_sample_gradient_norms(losses, parameters)
            grouped = self.pose_group > 1  # (only when the azimuth is a score part: see __init__)
            shared = score - {"azimuth"} if grouped else score
            sampled_bins = grouped and not self.enumerate_bins
            if shared or sampled_bins:
                rewards = outer_gradient(
                    "score", u, log_prob=self.psi.log_prob(noise, shared) if shared else None, alignment=alignment,
                    gradient_norms=norms, normalise=config.outer.alignment_normalisation, baseline=self.baseline,
                    grouped_log_prob=self.psi.log_prob(noise, {"azimuth"}) if sampled_bins else None,
                    group_size=self.pose_group,
                )
            else:
                rewards = alignment_rewards(alignment, u, config.outer.alignment_normalisation, norms)
            if self.enumerate_bins and not self.by_appearance:
                logits = self.psi.azimuth_logits
                if gram is not None:
                    scenes = torch.div(torch.arange(noise.batch_size), self.pose_group, rounding_mode="floor")
                    cells = noise.class_ids[:, 0] * logits.shape[1] + noise.azimuth_bin[:, 0]
                    self.mixture.update(rewards, gram, cells.to(logits.device), scenes.to(logits.device), logits.numel())
                    gradient, found = self.mixture.gradient(logits)
                    diagnostics.update(found)
                else:
                    gradient = enumerated_bin_gradient(logits, _mean_by_class_and_bin(rewards, noise, *logits.shape))
                logits.grad = gradient if logits.grad is None else logits.grad + gradient
            diagnostics["alignment_mean"] = float(alignment.mean())
            diagnostics["reward_by_azimuth_bin"] = _mean_by_bin(rewards, noise, self.psi.config.azimuth_bins)
        return val_loss, diagnostics

    def parameters_aligned(self) -> list[bool] | None:
        """Per trainable detector parameter: does the per-image alignment use it
        (alignment_ignores; None: all)? Fails, before any work, naming a prefix that matches no
        parameter."""
        if not self.config.outer.alignment_ignores:
            return None
        model = build_detector(self.detector_config)
        names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        for prefix in self.config.outer.alignment_ignores:
            if not any(name.startswith(prefix) for name in names):
                raise OptimizerError(
                    f"OptimizeConfig.outer.alignment_ignores: {prefix!r} is the start of no parameter name of the "
                    f"{self.config.detector.arch} detector (they look like {names[0]!r} ... {names[-1]!r})")
        kept = [not any(name.startswith(prefix) for prefix in self.config.outer.alignment_ignores) for name in names]
        if not any(kept):
            raise OptimizerError("OptimizeConfig.outer.alignment_ignores: leaves no parameter for the per-image alignment")
        return kept

    def search_score(
        self, model: DetectionModel, iteration: int, periodic_map: bool = True
    ) -> tuple[float, float, DetectionMetrics | None]:
        """(score, validation loss, metrics) of a fine-tuned detector copy, higher score better:
        the validation mAP50-95 or minus the validation loss (search_metric). The mAP is also
        computed every val_map_every iterations for the record, unless not ``periodic_map``."""
        val_loss = self.val_loss(model, iteration)
        by_map = self.config.outer.search_metric == "map50_95"
        metrics = self.val_map(model, iteration, always=by_map) if by_map or periodic_map else None
        score = metrics.map50_95 if by_map else -val_loss
        return score, val_loss, metrics

    def lookahead_direction(self, batch: ImageBatch, noise: PsiNoise, iteration: int) -> dict:
        """Estimator 'lookahead': a copy of the detector fine-tuned on each bin's images (the
        same scenes and minibatch order for every bin), mixed with images drawn by psi
        (lookahead_bin_share; the same draws for every bin), scored on the validation set; the
        exact expectation of the scores over the bins gives the logits' gradient."""
        bins = self.psi.config.azimuth_bins
        chosen = noise.azimuth_bin[:, 0]
        per_bin = noise.batch_size // bins
        share = self.config.outer.lookahead_bin_share
        from_psi = self.rows_by_psi(noise, iteration, round(per_bin * (1 - share) / share), "lookahead")
        scores = []
        for k in range(bins):
            model = copy.deepcopy(self.detector)
            rows = torch.cat([(chosen == k).nonzero()[:, 0], from_psi.to(chosen.device)])
            self.train(model, batch.index(rows), self.config.budget.inner_steps, copy.deepcopy(self.finetune_state),
                       iteration)
            scores.append(self.search_score(model, iteration, periodic_map=False)[0])  # only the score is kept
        logits = self.psi.azimuth_logits
        logits.grad = enumerated_bin_gradient(logits, torch.tensor(scores, device=logits.device))
        return {"score_by_azimuth_bin": scores}

    def rows_by_psi(self, noise: PsiNoise, iteration: int, count: int, purpose: str) -> Tensor:
        """``count`` rows of an every-bin batch, drawn with replacement in proportion to psi's
        probability of each row's bin (CPU indices)."""
        if count == 0:
            return torch.zeros(0, dtype=torch.long)
        probs = self.psi.azimuth_probs().detach()[noise.class_ids[:, 0], noise.azimuth_bin[:, 0]]
        return torch.multinomial(probs.cpu(), count, replacement=True,
                                 generator=_generator(self.config.seed, iteration, purpose))

    def resample_by_psi(self, batch: ImageBatch, noise: PsiNoise, iteration: int) -> ImageBatch:
        """As many rows of an every-bin batch as it has, drawn in proportion to psi's
        probability of each row's bin: training images distributed as psi says."""
        rows = self.rows_by_psi(noise, iteration, noise.batch_size, "resample")
        return batch.index(rows.to(batch.images.device))

    def step_psi(self, iteration: int) -> float:
        """Normalise psi's gradient, add the entropy bonus, take the Adam step (its size warmed
        up over the first psi_warmup_iterations) and the temperature step; returns the norm of
        the outer gradient before normalising."""
        parameters = [p for p in self.psi.parameters()]
        grads = [p.grad for p in parameters if p.grad is not None]
        norm = float(torch.cat([g.reshape(-1) for g in grads]).norm()) if grads else 0.0
        _check_finite(norm, "the hypergradient", iteration, "lower psi.learning_rate or raise damping")
        if self.config.outer.normalise_hypergradient and norm > 0:
            for g in grads:
                g.div_(norm)
        if "azimuth" in self.learnable and self.config.psi.entropy_weight > 0:
            (-self.config.psi.entropy_weight * self.psi.entropy().sum()).backward()
        if self.config.psi.share_classes:
            for part, tensors in self.psi.part_parameters().items():
                if part in PER_CLASS_PARTS:
                    for tensor in tensors:
                        tensor.grad.copy_(tensor.grad.mean(0, keepdim=True).expand_as(tensor))
        for group in self.psi_optimizer.param_groups:
            group["lr"] = self.config.psi.learning_rate * psi_step_scale(iteration, self.config.psi.warmup_iterations)
        self.psi_optimizer.step()
        self.psi_optimizer.zero_grad(set_to_none=True)
        self.psi.step_temperature()
        for name, value in self.psi.named_parameters():
            _check_finite(value.detach(), f"psi's {name}", iteration, "lower psi.learning_rate")
        return norm

    # ------------------------------------------------------------------ one outer iteration

    def iteration(self, t: int) -> tuple[dict, ImageBatch]:
        config = self.config
        method = config.outer.method
        record: dict = {"iteration": t}
        sampler = self.psi
        if method == "random-search":
            if t == 0:
                sampler = self.psi  # the initial psi is the first candidate
            else:
                start = initial_psi(config, self.psi_config).to(self.device)
                sampler = random_candidate(start, self.learnable, _generator(config.seed, t, "candidate"),
                                           shared=config.psi.share_classes)
        noise = sampler.sample(config.budget.images_per_iteration, _generator(config.seed, t, "render"),
                               self.pose_group).noise
        if self.every_bin:  # each group of pose_group scenes at every bin, in order
            bins = torch.arange(self.pose_group, device=noise.azimuth_bin.device).repeat(noise.batch_size // self.pose_group)
            noise.azimuth_bin[:] = bins[:, None]
        batch = self.render(noise, t, sampler)

        if method in ("random-search", "reinforce"):
            model = copy.deepcopy(self.detector)
            trained = self.train(model, batch, config.budget.inner_steps, copy.deepcopy(self.finetune_state), t)
            score, val_loss, metrics = self.search_score(model, t)
            if method == "random-search":
                record["candidate_score"] = score
                if self.best is None or score > self.best["score"]:
                    self.best = {"psi": {k: v.detach().cpu().clone() for k, v in sampler.state_dict().items()},
                                 "score": score, "iteration": t}
                    self.psi.load_state_dict(self.best["psi"])
                record["best_candidate"] = self.best["iteration"]
            else:
                baseline = self.baseline.update(torch.tensor([score]))
                rewards = torch.full((noise.batch_size,), score, device=self.device)
                score_function_surrogate(self.psi.log_prob(noise, self.learnable), rewards, baseline).backward()
                record["reward"], record["reward_baseline"] = score, baseline
                record["hypergradient_norm"] = self.step_psi(t)
        else:
            model = self.detector
            if self.lookahead:
                record.update(self.lookahead_direction(batch, noise, t))
                record["hypergradient_norm"] = self.step_psi(t)
            elif method == "neural-sim":
                # The hypergradient first, on images the detector has not been trained on yet:
                # after fine-tuning on them their gradients describe how well it fits them, not
                # what they would teach it (a fresh sample estimates the expectation over psi).
                val_loss_before, diagnostics = self.outer_step_direction(batch, noise, t)
                record.update(diagnostics, val_loss_before=val_loss_before)
                record["hypergradient_norm"] = self.step_psi(t)
            if self.every_bin:
                batch = self.resample_by_psi(batch, noise, t)
            trained = self.train(model, batch, config.budget.inner_steps, self.finetune_state, t)
            self.finetune_state = trained
            val_loss = self.val_loss(model, t)
            metrics = self.val_map(model, t)

        record["val_loss"] = val_loss
        record["train_loss"] = trained.losses[-1] if trained.losses else None
        record["val_map50_95"] = metrics.map50_95 if metrics is not None else None
        record["val_map50"] = metrics.map50 if metrics is not None else None
        keep_if_best(model, t, metrics, self.history, self.out_dir)  # an artifact: the final detector can be worse
        record["temperature"] = self.psi.temperature
        record["images_rendered"] = self.images_rendered
        record["psi"] = self.psi.snapshot()
        if self.target_azimuth is not None:
            record["azimuth_tv"] = azimuth_total_variation(record["psi"]["azimuth"]["probs"], self.target_azimuth)
        return record, batch

    # ------------------------------------------------------------------ the run

    def run(self) -> OptimizeResult:
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        done = self.completed_result()
        if done is not None:
            return done
        priors = "" if self.priors is None else f", starting psi from the photos ({', '.join(self.priors['applied']) or 'nothing applied'})"
        self.emit("setup", 0, 1, message=f"{config.outer.method}: {len(self.class_names)} classes, "
                    f"{len(self.val_set)} validation images, device {self.device}{priors}")
        saved = load_checkpoint(self.out_dir)
        if saved is None:
            state = self.initial_state()
            save_checkpoint(state, self.out_dir)
        else:
            self.restore(saved)
            state = saved
        # Only now: a folder holding another config's run keeps saying which config that was.
        write_json_atomic(self.out_dir / "config.json", config.to_dict())
        val_loss_start = state.val_loss_start
        start = state.iteration

        total = config.budget.outer_iterations
        bar = tqdm(range(start, total), initial=start, total=total, desc=f"{config.outer.method} outer", unit="it",
                   disable=not self.progress_bar)
        for t in bar:
            if self.should_stop():
                bar.close()
                return self.cancelled(t)
            began = time.perf_counter()
            record, batch = self.iteration(t)
            record["seconds"] = round(time.perf_counter() - began, 3)
            self.history.append(record)
            save_checkpoint(self.state(t + 1, val_loss_start), self.out_dir)
            count = min(config.detector.sample_images, batch.images.shape[0])
            samples = save_sample_images(
                batch.images[:count], batch.boxes[:count], batch.classes[:count], batch.keep[:count],
                self.class_names, sample_paths(self.out_dir, t, count),
            )
            metrics = _numbers(record)
            bar.set_postfix(val_loss=f"{record['val_loss']:.3f}")
            self.emit("outer", t, total, metrics=metrics, psi=record["psi"], samples=samples,
                        message=f"outer iteration {t + 1}/{total}")
        bar.close()
        return self.final_stage(val_loss_start)

    def cancelled(self, iteration: int) -> OptimizeResult:
        self.emit("outer", iteration, self.config.budget.outer_iterations, psi=self.psi.snapshot(), message="cancelled")
        return OptimizeResult(
            status="cancelled", out_dir=self.out_dir, iterations_done=len(self.history), psi=self.psi.snapshot(),
            history=self.history, images_rendered=self.images_rendered,
        )

    def final_stage(self, val_loss_start: float | None) -> OptimizeResult:
        config = self.config
        final: dict = {}
        real_report: dict = {}  # issue 23: the final training's photos and the real-only baseline
        dataset_dir = detector_path = None
        stage_seconds: dict[str, float] = {}
        shape = self.final_shape
        if config.budget.final_images:
            real_report["final_image"] = {"height": shape[0], "width": shape[1]}
            if self.should_stop():
                return self.cancelled(config.budget.outer_iterations)
            began = time.perf_counter()
            self.emit("final-render", 0, config.budget.final_images, psi=self.psi.snapshot(),
                        message=f"rendering {config.budget.final_images} images from the learned psi")
            dataset_dir = self.out_dir / "dataset"
            if dataset_dir.exists():
                shutil.rmtree(dataset_dir)
            # The same draws whatever the method and its iterations (common random numbers): runs
            # of one seed then differ in their final data only where their psi differ.
            self.render_final(self.psi, dataset_dir)
            self.images_rendered += config.budget.final_images
            stage_seconds["final_render"] = round(time.perf_counter() - began, 3)
            self.emit("final-render", config.budget.final_images, config.budget.final_images, message="dataset written")

            if self.should_stop():
                return self.cancelled(config.budget.outer_iterations)
            began = time.perf_counter()

            def epoch_done(trainer) -> None:
                if trainer.epoch >= trainer.epochs:
                    return  # Ultralytics' validation of the best weights after the last epoch
                # Ultralytics keeps the epoch's mean loss terms as a dict (box, cls, dfl).
                losses = {f"train_{name}": float(value) for name, value in (trainer.tloss or {}).items()}
                self.emit("final-train", trainer.epoch + 1, trainer.epochs, metrics=losses,
                          message=f"final detector: epoch {trainer.epoch + 1}/{trainer.epochs}")

            # issue 23: the job's labelled photos join the training (optimizer.real_training).
            mix = final_training_data(config, self.val_set, dataset_dir, self.out_dir)
            real_report["final_training_data"] = mix.summary()
            best = train_final_detector(
                config, self.class_names, self.out_dir, self.out_dir / "final_train", seed=config.seed,
                device=self.device, progress=self.progress_bar, callbacks={"on_fit_epoch_end": [epoch_done]},
                data_dir=mix.data_dir, should_stop=self.should_stop, image_size=max(shape),
            )
            if best is None:
                return self.cancelled(config.budget.outer_iterations)
            stage_seconds["final_train"] = round(time.perf_counter() - began, 3)

            began = time.perf_counter()
            self.emit("evaluate", 0, 1, message="evaluating the final detector")
            model = load_detector(best, self.device)
            sets = {"val": self.val_set, **({"test": self.test_set} if self.test_set is not None else {})}
            for name, labelled in sets.items():
                metrics = evaluate(model, labelled, max(shape), progress=self.progress_bar)
                final[name] = {"map50_95": metrics.map50_95, "map50": metrics.map50, "per_class_ap": metrics.per_class_ap}
            detector_path = save_detector(model, self.out_dir / "detector.pt")
            stage_seconds["evaluate"] = round(time.perf_counter() - began, 3)

            # issue 23: the same detector trained on the photos alone, on the same test set.
            if self.test_set is not None and config.final.real_only_baseline:
                began = time.perf_counter()
                self.emit("evaluate", 0, 1, message="training and evaluating the real-only baseline")
                real_only = train_real_only(
                    config, self.class_names, self.val_set, self.test_set, mix.images_per_epoch, self.out_dir,
                    train_final_detector, device=self.device, progress=self.progress_bar,
                    should_stop=self.should_stop, image_size=max(shape),
                )
                if real_only is None:
                    return self.cancelled(config.budget.outer_iterations)
                real_report["real_only"] = compare_with_real_only(final["test"], real_only)
                stage_seconds["real_only"] = round(time.perf_counter() - began, 3)

            if config.final.uniform_baseline:
                began = time.perf_counter()
                arm = self.baseline_arm(final, detector_path)
                if arm is None:
                    return self.cancelled(config.budget.outer_iterations)
                real_report.update(arm)
                stage_seconds["uniform_baseline"] = round(time.perf_counter() - began, 3)

        self.emit("report", 0, 1, message="writing the report")
        snapshot = self.psi.snapshot()
        write_json_atomic(self.out_dir / "psi.json", {
            "snapshot": snapshot,
            "psi_config": _plain(asdict(self.psi.config)),
            "priors": self.priors,
            # Bins of probability 0 have logit -inf, which JSON cannot hold; -1e4 is as impossible.
            "state": {name: torch.nan_to_num(value.detach().cpu(), neginf=-1e4).tolist()
                      for name, value in self.psi.state_dict().items()},
        })
        before_after = psi_before_after(Psi.uniform(self.psi_config).snapshot(), snapshot, config.psi.learnable)
        plots = [*plot_history(self.history, self.class_names, final, self.out_dir / "plots"),
                 *plot_psi_before_after(before_after, self.out_dir / "plots")]
        report = {
            "status": "completed",
            "config": _plain(config.to_dict()),
            "class_names": self.class_names,
            "iterations_done": len(self.history),
            "images_rendered": self.images_rendered,
            "val_loss_start": val_loss_start,
            "final": final,
            **real_report,
            "psi": snapshot,
            "psi_before_after": before_after,
            "best_loop_detector": best_iteration(self.history),
            "priors": self.priors,
            "azimuth_tv": (azimuth_total_variation(snapshot["azimuth"]["probs"], self.target_azimuth)
                           if self.target_azimuth is not None else None),
            "seconds": {"outer": round(sum(r["seconds"] for r in self.history), 3), **stage_seconds},
            "plots": [str(p.relative_to(self.out_dir)) for p in plots],
            "history": self.history,
        }
        report_path = write_json_atomic(self.out_dir / "report.json", report)
        result = OptimizeResult(
            status="completed", out_dir=self.out_dir, iterations_done=len(self.history), psi=snapshot,
            history=self.history, metrics=final, images_rendered=self.images_rendered, report=report_path,
            detector=detector_path, dataset=dataset_dir,
        )
        self.emit("done", 1, 1, metrics={**_final_numbers(final), **_baseline_numbers(real_report)},
                  psi=snapshot, message="done")
        return result

    @cached_property
    def final_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the final dataset: the photos' aspect and pixel scale
        (optimizer.final_size); the loop searched at image_size."""
        return final_image_shape(self.config, self.val_set)

    def render_final(self, psi: Psi, folder: Path) -> None:
        """The final dataset's draws (the same whatever the method and its iterations: common
        random numbers) from ``psi`` into ``folder``."""
        render_dataset(self.renderer, psi, self.config.budget.final_images, self.final_shape, folder, self.class_names,
                       seed=_seed(self.config.seed, 0, "final"), progress=self.progress_bar, photometric=self.photometric)

    def baseline_arm(self, final: dict, detector_path: Path) -> dict | None:
        """The report's ``baseline`` and ``difference`` entries (optimizer.uniform_baseline;
        ``baseline`` alone, saying why, when there is none), or None when should_stop() stopped it."""
        config = self.config
        if self.test_set is None:
            return {"baseline": {"skipped": f"no test set, and fewer than {MIN_PHOTOS_TO_HOLD_OUT} validation "
                                            "photos to hold out"}}
        if config.outer.method == "uniform":
            return {"baseline": {"skipped": "the job's psi is the starting psi: the baseline would be the same run"}}
        self.emit("evaluate", 0, 1, message="training and evaluating the uniform baseline (psi at its start)")
        self.images_rendered += config.budget.final_images
        baseline = uniform_baseline(
            config, self.class_names, lambda folder: self.render_final(Psi.uniform(self.psi_config).to(self.device), folder),
            self.val_set, self.test_set, "held-out validation photos" if self.test_held_out else "test set", final["test"], detector_path,
            self.out_dir, train_final_detector, image_size=max(self.final_shape), device=self.device, progress=self.progress_bar, should_stop=self.should_stop,
        )
        return baseline

    def completed_result(self) -> OptimizeResult | None:
        """The result of a finished run of the same config in ``out_dir``, if there is one."""
        report = completed_report(self.out_dir, self.config)
        if report is None:
            return None
        path = self.out_dir / "report.json"
        detector = self.out_dir / "detector.pt"
        dataset = self.out_dir / "dataset"
        return OptimizeResult(
            status="completed", out_dir=self.out_dir, iterations_done=report["iterations_done"], psi=report["psi"],
            history=report["history"], metrics=report["final"], images_rendered=report["images_rendered"],
            report=path, detector=detector if detector.is_file() else None, dataset=dataset if dataset.is_dir() else None,
        )


def detector_config(config: OptimizeConfig, class_names: list[str]) -> DetectorConfig:
    """The detector a run of ``config`` builds at its start."""
    return DetectorConfig(arch=config.detector.arch, weights=config.detector.weights, class_names=list(class_names),
                          image_size=config.detector.image_size, seed=config.seed)


def train_final_detector(
    config: OptimizeConfig,
    class_names: list[str],
    run_dir: Path,
    out_dir: Path,
    *,
    seed: int,
    device: torch.device,
    progress: bool = False,
    callbacks: dict | None = None,
    data_dir: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    image_size: int | None = None,
) -> Path | None:
    """Train a final detector on ``data_dir`` (a YOLO folder; default ``run_dir/dataset``) as
    the final stage does (from the initial or the warmed-up weights: final.init), at
    ``image_size`` (default ``config.detector.image_size``; the final stage passes the photos' size,
    optimizer.final_size), with Ultralytics' trainer seeded by ``seed``; returns its best
    checkpoint, or None when ``should_stop()``, asked after every batch, said yes."""
    start = (load_detector(Path(run_dir) / WARMUP_DETECTOR) if config.final.init == "warmup"
             else detector_config(config, class_names))
    callbacks = {event: list(functions) for event, functions in (callbacks or {}).items()}
    if should_stop is not None:
        def batch_done(trainer) -> None:
            # Not trainer.stop: a stopped trainer still validates on the whole dataset.
            if should_stop():
                raise _Stopped

        callbacks.setdefault("on_train_batch_end", []).append(batch_done)
    try:
        return train_on_dataset(
            start, Path(data_dir or Path(run_dir) / "dataset"), config.budget.final_epochs,
            image_size or config.detector.image_size,
            out_dir,
            progress=progress, batch_size=config.final.batch_size, device="cpu" if device.type == "cpu" else "0",
            seed=seed, callbacks=callbacks,
            **{"val": False, "plots": False, "nbs": config.final.batch_size, **config.final.trainer_overrides},
        )
    except _Stopped:
        return None


def completed_report(out_dir: Path, config: OptimizeConfig) -> dict | None:
    """The report of a finished run of ``config`` in ``out_dir`` (what :func:`run_loop` reuses
    instead of running again), or None."""
    path = Path(out_dir) / "report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    if report.get("status") != "completed" or config.differences(report.get("config") or {}):
        return None
    return report


def _plain(data):
    """JSON round trip: tuples become lists, so configs compare equal after a save and load."""
    return json.loads(json.dumps(data))


def _numbers(record: dict) -> dict[str, float]:
    """The numeric entries of a history record (Progress.metrics)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _baseline_numbers(report: dict) -> dict[str, float]:
    """The done report's numbers of the uniform baseline (none when there is none)."""
    if "difference" not in report:
        return {}
    baseline, difference = report["baseline"], report["difference"]
    interval = difference["map50_95_bootstrap"]
    numbers = {"baseline_test_map50_95": baseline["test"]["map50_95"], "baseline_test_map50": baseline["test"]["map50"],
               "difference_map50_95": difference["map50_95"], "difference_map50_95_std": interval["std"],
               "difference_map50_95_low": interval["low"], "difference_map50_95_high": interval["high"]}
    return {name: value for name, value in numbers.items() if value is not None}


def _final_numbers(final: dict) -> dict[str, float]:
    return {f"{name}_{key}": value for name, metrics in final.items() for key, value in metrics.items()
            if isinstance(value, float)}


def _mean_by_class_and_bin(rewards: Tensor, noise: PsiNoise, classes: int, bins: int) -> Tensor:
    """(classes, bins): the mean reward of the images whose first object is of each class and
    fell in each bin; 0 for a class without images (a constant row: no gradient)."""
    index = (noise.class_ids[:, 0] * bins + noise.azimuth_bin[:, 0]).to(rewards.device)
    sums = torch.zeros(classes * bins, device=rewards.device, dtype=rewards.dtype).index_add_(0, index, rewards.detach())
    counts = torch.bincount(index, minlength=classes * bins).to(rewards.dtype)
    return (sums / counts.clamp_min(1)).reshape(classes, bins)


def _mean_by_bin(rewards: Tensor, noise: PsiNoise, bins: int) -> list[float | None]:
    """Mean reward of the images whose first object fell in each azimuth bin (None: no image)."""
    chosen = noise.azimuth_bin[:, 0].cpu()
    rewards = rewards.detach().cpu()
    return [float(rewards[chosen == k].mean()) if (chosen == k).any() else None for k in range(bins)]
