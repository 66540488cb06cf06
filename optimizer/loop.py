"""The Neural-Sim closed loop: learn psi so that the detector trained on its renders does best
on the user's validation set, then render the final dataset and train the final detector.

This module holds the sequence and what every method shares:

1. set up: the scene's renderer (:func:`job_renderer`), the photos' classes in the scene's
   order, the starting psi from the photos (optimizer.priors), the method's strategy
   (optimizer.strategies: one per config.outer.method);
2. warm up the detector from the initial psi whatever the method (optimizer.warmup), or resume
   from ``checkpoint.pt``;
3. iterate: per outer iteration ``t`` the strategy draws the scenes (recorded noise), the loop
   renders them without gradient, the strategy learns from them and trains a detector on them
   (neural-sim, uniform, oracle: the loop detector, warm-started; random search, REINFORCE: a
   copy of it per candidate or policy sample), the loop records the validation loss and mAP,
   keeps the best loop detector (optimizer.best_detector) and checkpoints atomically;
4. the final stage (optimizer.final_stage): final dataset, final detector, evaluation,
   baselines and the report.

Randomness: every draw comes from a generator seeded by (seed, iteration, purpose)
(optimizer.seeds), so an iteration depends only on the state the previous one left, which the
checkpoint holds; a run resumed from its checkpoint reproduces the uninterrupted one bit for bit
(same machine and thread count).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from detector.datasets import LabelledSet, load_dataset
from detector.evaluate import evaluate
from detector.model import build_detector, save_detector
from detector.targets import ImageBatch
from detector.train import FinetuneState
from optimizer.baselines import azimuth_total_variation
from optimizer.best_detector import keep_if_best
from optimizer.checkpoint import LoopState, load_checkpoint, save_checkpoint
from optimizer.config import OptimizeConfig, Progress, plain
from optimizer.context import LoopContext
from optimizer.final_stage import FinalStage
from optimizer.final_training import WARMUP_DETECTOR, train_final_detector
from optimizer.psi import OptimizerError
from optimizer.real_training import photo_backgrounds
from optimizer.report import sample_paths, save_sample_images, write_json_atomic
from optimizer.result import OptimizeResult, completed_result
from optimizer.uniform_baseline import hold_out
from optimizer.validation import validation_loss_and_gradient
from optimizer.warmup import warm_up, warmup_images
from renderer.resting import RestingConfig
from renderer.scene_renderer import SceneRenderer
from renderer.scene_spec import SceneSpec, read_scene_spec, scene_renderer

__all__ = ["job_renderer", "run_loop", "run_optimization", "train_final_detector"]


def job_renderer(config: OptimizeConfig, spec: SceneSpec, val_set: LabelledSet) -> SceneRenderer:
    """The renderer a job renders with: the scene's objects on its backgrounds plus those
    harvested from the labelled photos (renderer.harvest), objects resting in their stable poses
    (renderer.resting), as ``config`` asks."""
    harvested = photo_backgrounds(val_set) if config.scene.harvest_backgrounds else None
    resting = RestingConfig(canonical_pose_share=config.scene.canonical_pose_share) if config.scene.resting_poses else None
    return scene_renderer(spec, harvested, resting)


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


class _Loop(LoopContext):
    """One run of :func:`run_loop`: the sequence on the run's shared state (LoopContext)."""

    def initial_state(self) -> LoopState:
        """Psi, detector and the strategy's state before the first outer iteration (after the warm-up)."""
        config = self.config
        self.psi = self.strategy.initial_psi(config, self.psi_config).to(self.device)
        self.strategy.start()
        self.detector = build_detector(self.detector_config).to(self.device)
        self.finetune_state = FinetuneState(optimizer={})
        self.history = []
        self.images_rendered = 0
        warm_up(self)
        if config.final.init == "warmup":
            # Before the first checkpoint, so a resumed run always finds it.
            partial = self.out_dir / f"{WARMUP_DETECTOR}.partial"
            save_detector(self.detector, partial).replace(self.out_dir / WARMUP_DETECTOR)
        val_loss, _ = validation_loss_and_gradient(self.detector, self.val_batch, config.detector.val_batch_size, False)
        return self.state(iteration=0, val_loss_start=val_loss)

    def state(self, iteration: int, val_loss_start: float | None) -> LoopState:
        def cpu(state: dict) -> dict:
            return {k: v.detach().cpu().clone() for k, v in state.items()}

        return LoopState(
            config=plain(self.config.to_dict()), iteration=iteration, psi=cpu(self.psi.state_dict()),
            detector=cpu(self.detector.state_dict()), finetune=asdict(self.finetune_state),
            val_loss_start=val_loss_start, torch_rng=torch.get_rng_state(), history=self.history,
            **self.strategy.state_dict(),
        )

    def restore(self, state: LoopState) -> None:
        differing = self.config.differences(state.config)
        if differing:
            raise OptimizerError(
                f"{self.out_dir}: holds a run of another config (settings {differing} differ); "
                "use a new output folder or the same config"
            )
        self.psi = self.strategy.initial_psi(self.config, self.psi_config).to(self.device)
        self.psi.load_state_dict(state.psi)
        self.detector = build_detector(self.detector_config).to(self.device)
        self.detector.load_state_dict(state.detector)
        self.finetune_state = FinetuneState(**state.finetune)
        self.strategy.load_state_dict(state)
        self.history = list(state.history)
        self.images_rendered = self.history[-1]["images_rendered"] if self.history else warmup_images(self.config)
        if state.torch_rng is not None:
            torch.set_rng_state(state.torch_rng)

    def iteration(self, t: int) -> tuple[dict, ImageBatch]:
        """Outer iteration ``t``: the strategy's draw, rendered; the strategy's step; the record."""
        record: dict = {"iteration": t}
        sampler, noise = self.strategy.draw(t)
        batch = self.render(noise, t, sampler)
        step = self.strategy.step(t, batch, noise, sampler, record)
        metrics = step.metrics
        record["val_loss"] = step.val_loss
        record["train_loss"] = step.trained.losses[-1] if step.trained.losses else None
        record["val_map50_95"] = metrics.map50_95 if metrics is not None else None
        record["val_map50"] = metrics.map50 if metrics is not None else None
        keep_if_best(step.model, t, metrics, self.history, self.out_dir)  # an artifact: the final detector can be worse
        record["temperature"] = self.psi.temperature
        record["images_rendered"] = self.images_rendered
        record["psi"] = self.psi.snapshot()
        if self.target_azimuth is not None:
            record["azimuth_tv"] = azimuth_total_variation(record["psi"]["azimuth"]["probs"], self.target_azimuth)
        return record, step.batch

    def run(self) -> OptimizeResult:
        config = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        done = completed_result(self.out_dir, config)
        if done is not None:
            return done
        priors = "" if self.priors is None else f", starting psi from the photos ({', '.join(self.priors['applied']) or 'nothing applied'})"
        notes = "".join(f"; {note}" for note in self.strategy.notes)
        self.emit("setup", 0, 1, message=f"{config.outer.method}: {len(self.class_names)} classes, "
                  f"{len(self.val_set)} validation images, device {self.device}{priors}{notes}")
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
            bar.set_postfix(val_loss=f"{record['val_loss']:.3f}")
            self.emit("outer", t, total, metrics=_numbers(record), psi=record["psi"], samples=samples,
                      message=f"outer iteration {t + 1}/{total}")
        bar.close()
        # The trainer and evaluator are looked up here, when the stage starts, so that patching
        # this module's names reaches every final training and evaluation.
        return FinalStage(self, train_final_detector, evaluate).run(val_loss_start)


def _numbers(record: dict) -> dict[str, float]:
    """The numeric entries of a history record (Progress.metrics)."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
