"""Stand-in for tensorboardX: with it importable, Lightning's default logger is TensorBoardLogger, as
it is where the tutorials were written (they call `logger.experiment.add_image`). Writes nothing."""

import os

from _anything import Anything

__version__ = "2.6+gauntlet"


class SummaryWriter:
    def __init__(self, log_dir=None, *args, **kwargs):
        self.log_dir = self.logdir = log_dir
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)

    def __getattr__(self, name):
        return Anything(f"SummaryWriter.{name}")
