"""The loop's final stage: render ``final_images`` from the learned psi
(:func:`optimizer.dataset.render_dataset`), train the final detector with Ultralytics' trainer
(from the initial weights or the warmed-up detector: final_init) on them and the job's photos
(optimizer.real_training), evaluate it on the target test (and validation) set, train the
real-only and uniform baselines when asked, and write the report (optimizer.final_report)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from detector.model import load_detector, save_detector
from optimizer.dataset import render_dataset
from optimizer.final_report import write_report
from optimizer.final_size import final_image_shape
from optimizer.psi import Psi
from optimizer.real_training import compare_with_real_only, final_training_data, train_real_only
from optimizer.result import OptimizeResult
from optimizer.seeds import seed
from optimizer.uniform_baseline import MIN_PHOTOS_TO_HOLD_OUT, uniform_baseline

if TYPE_CHECKING:
    from optimizer.context import LoopContext


class FinalStage:
    """The final stage of ``loop``. ``train`` is :func:`optimizer.final_training.train_final_detector`
    and ``evaluate`` :func:`detector.evaluate.evaluate`, passed in (as to the baselines' modules)
    so that a caller can watch or replace every final training and evaluation."""

    def __init__(self, loop: LoopContext, train: Callable[..., Path | None], evaluate: Callable) -> None:
        self.loop = loop
        self.config = loop.config
        self.train = train
        self.evaluate = evaluate

    @cached_property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the final dataset: the photos' aspect and pixel scale
        (optimizer.final_size); the loop searched at image_size."""
        return final_image_shape(self.config, self.loop.val_set)

    def run(self, val_loss_start: float | None) -> OptimizeResult:
        config, loop = self.config, self.loop
        final: dict = {}
        real_report: dict = {}  # issue 23: the final training's photos and the real-only baseline
        dataset_dir = detector_path = None
        stage_seconds: dict[str, float] = {}
        shape = self.shape
        if config.budget.final_images:
            real_report["final_image"] = {"height": shape[0], "width": shape[1]}
            if loop.should_stop():
                return loop.cancelled(config.budget.outer_iterations)
            began = time.perf_counter()
            loop.emit("final-render", 0, config.budget.final_images, psi=loop.psi.snapshot(),
                      message=f"rendering {config.budget.final_images} images from the learned psi")
            dataset_dir = loop.out_dir / "dataset"
            if dataset_dir.exists():
                shutil.rmtree(dataset_dir)
            self.render(loop.psi, dataset_dir)
            loop.images_rendered += config.budget.final_images
            stage_seconds["final_render"] = round(time.perf_counter() - began, 3)
            loop.emit("final-render", config.budget.final_images, config.budget.final_images, message="dataset written")

            if loop.should_stop():
                return loop.cancelled(config.budget.outer_iterations)
            began = time.perf_counter()

            def epoch_done(trainer) -> None:
                if trainer.epoch >= trainer.epochs:
                    return  # Ultralytics' validation of the best weights after the last epoch
                # Ultralytics keeps the epoch's mean loss terms as a dict (box, cls, dfl).
                losses = {f"train_{name}": float(value) for name, value in (trainer.tloss or {}).items()}
                loop.emit("final-train", trainer.epoch + 1, trainer.epochs, metrics=losses,
                          message=f"final detector: epoch {trainer.epoch + 1}/{trainer.epochs}")

            # issue 23: the job's labelled photos join the training (optimizer.real_training).
            mix = final_training_data(config, loop.val_set, dataset_dir, loop.out_dir)
            real_report["final_training_data"] = mix.summary()
            best = self.train(
                config, loop.class_names, loop.out_dir, loop.out_dir / "final_train", seed=config.seed,
                device=loop.device, progress=loop.progress_bar, callbacks={"on_fit_epoch_end": [epoch_done]},
                data_dir=mix.data_dir, should_stop=loop.should_stop, image_size=max(shape),
            )
            if best is None:
                return loop.cancelled(config.budget.outer_iterations)
            stage_seconds["final_train"] = round(time.perf_counter() - began, 3)

            began = time.perf_counter()
            loop.emit("evaluate", 0, 1, message="evaluating the final detector")
            model = load_detector(best, loop.device)
            sets = {"val": loop.val_set, **({"test": loop.test_set} if loop.test_set is not None else {})}
            for name, labelled in sets.items():
                metrics = self.evaluate(model, labelled, max(shape), progress=loop.progress_bar)
                final[name] = {"map50_95": metrics.map50_95, "map50": metrics.map50, "per_class_ap": metrics.per_class_ap}
            detector_path = save_detector(model, loop.out_dir / "detector.pt")
            stage_seconds["evaluate"] = round(time.perf_counter() - began, 3)

            # issue 23: the same detector trained on the photos alone, on the same test set.
            if loop.test_set is not None and config.final.real_only_baseline:
                began = time.perf_counter()
                loop.emit("evaluate", 0, 1, message="training and evaluating the real-only baseline")
                real_only = train_real_only(
                    config, loop.class_names, loop.val_set, loop.test_set, mix.images_per_epoch, loop.out_dir,
                    self.train, device=loop.device, progress=loop.progress_bar,
                    should_stop=loop.should_stop, image_size=max(shape),
                )
                if real_only is None:
                    return loop.cancelled(config.budget.outer_iterations)
                real_report["real_only"] = compare_with_real_only(final["test"], real_only)
                stage_seconds["real_only"] = round(time.perf_counter() - began, 3)

            if config.final.uniform_baseline:
                began = time.perf_counter()
                arm = self.baseline_arm(final, detector_path)
                if arm is None:
                    return loop.cancelled(config.budget.outer_iterations)
                real_report.update(arm)
                stage_seconds["uniform_baseline"] = round(time.perf_counter() - began, 3)

        return write_report(loop, val_loss_start, final, real_report, stage_seconds, dataset_dir, detector_path)

    def render(self, psi: Psi, folder: Path) -> None:
        """The final dataset's draws from ``psi`` into ``folder``: the same draws whatever the
        method and its iterations (common random numbers), so runs of one seed differ in their
        final data only where their psi differ."""
        loop = self.loop
        render_dataset(loop.renderer, psi, self.config.budget.final_images, self.shape, folder, loop.class_names,
                       seed=seed(self.config.seed, 0, "final"), progress=loop.progress_bar, photometric=loop.photometric)

    def baseline_arm(self, final: dict, detector_path: Path) -> dict | None:
        """The report's ``baseline`` and ``difference`` entries (optimizer.uniform_baseline;
        ``baseline`` alone, saying why, when there is none), or None when should_stop() stopped it."""
        config, loop = self.config, self.loop
        if loop.test_set is None:
            return {"baseline": {"skipped": f"no test set, and fewer than {MIN_PHOTOS_TO_HOLD_OUT} validation "
                                            "photos to hold out"}}
        if loop.strategy.keeps_the_uniform_start:
            return {"baseline": {"skipped": "the job's psi is the starting psi: the baseline would be the same run"}}
        loop.emit("evaluate", 0, 1, message="training and evaluating the uniform baseline (psi at its start)")
        loop.images_rendered += config.budget.final_images
        return uniform_baseline(
            config, loop.class_names, lambda folder: self.render(Psi.uniform(loop.psi_config).to(loop.device), folder),
            loop.val_set, loop.test_set, "held-out validation photos" if loop.test_held_out else "test set",
            final["test"], detector_path, loop.out_dir, self.train, image_size=max(self.shape), device=loop.device,
            progress=loop.progress_bar, should_stop=loop.should_stop,
        )
