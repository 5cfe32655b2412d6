"""A training hook that warns loudly when the loss explodes while staying finite.

Detectron2 stops a run only when the loss becomes NaN or infinite (and GridCLIP stops it as soon as
the head's outputs do, naming them). A learning rate far too high can instead leave the loss finite
but thousands of times its starting level, and the run would finish, exit 0 and save a useless
model. :class:`LossWatch` compares every ``total_loss`` with its early level (the smallest of the
first ``warmup`` iterations, before a diverging run gets far) and logs a warning, at most once per
``period`` iterations, when it is ``factor`` times higher; the end of training repeats the worst.
"""

import logging

from detectron2.engine import HookBase

__all__ = ["LossWatch"]

logger = logging.getLogger(__name__)


class LossWatch(HookBase):
    def __init__(self, warmup: int = 5, factor: float = 100.0, period: int = 20):
        self.warmup = int(warmup)
        self.factor = float(factor)
        self.period = int(period)
        self.early = []
        self.worst = None  # (ratio, iteration, loss)
        self._last_warned = None

    def after_step(self):
        histories = self.trainer.storage.histories()
        if "total_loss" not in histories:  # only the main process records it
            return
        value = float(histories["total_loss"].latest())
        if len(self.early) < self.warmup:
            self.early.append(value)
            return
        base = max(min(self.early), 1e-12)
        ratio = value / base
        if ratio < self.factor:
            return
        it = self.trainer.iter
        if self.worst is None or ratio > self.worst[0]:
            self.worst = (ratio, it, value)
        if self._last_warned is None or it - self._last_warned >= self.period:
            self._last_warned = it
            logger.warning(
                "LOSS EXPLODED: total_loss %.4g at iteration %d is %.0fx its early level %.4g: "
                "training is diverging. Lower SOLVER.BASE_LR (keep SOLVER.CLIP_GRADIENTS on) "
                "and restart",
                value,
                it,
                ratio,
                base,
            )

    def after_train(self):
        if self.worst is not None:
            ratio, it, value = self.worst
            logger.warning(
                "LOSS EXPLODED during this run: worst total_loss %.4g at iteration %d, "
                "%.0fx its early level. "
                "The saved model is not trustworthy; lower SOLVER.BASE_LR and train again",
                value,
                it,
                ratio,
            )
