"""The rule catalogue: every rule class, in code order. `nbrefactor rules` and the README's table
are generated from these classes."""

from __future__ import annotations

from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule, Valid
from codemods.rules.nbr101_cuda_before_launch import CudaInitializedBeforeLaunch
from codemods.rules.nbr102_cuda_probe_before_lightning_import import CudaProbeBeforeLightningImport
from codemods.rules.nbr103_accelerate_state_before_launcher import AccelerateStateBeforeLauncher
from codemods.rules.nbr104_bitsandbytes_before_launcher import BitsandbytesBeforeLauncher
from codemods.rules.nbr201_data_built_in_notebook_process import DataBuiltInNotebookProcess
from codemods.rules.nbr301_launch_without_function import LaunchWithoutFunction
from codemods.rules.nbr302_training_at_top_level import TrainingAtTopLevel
from codemods.rules.nbr303_fit_twice_on_one_trainer import FitTwiceOnOneTrainer
from codemods.rules.nbr305_accelerate_training_at_top_level import AccelerateTrainingAtTopLevel
from codemods.rules.nbr401_strategy_not_notebook_compatible import StrategyNotNotebookCompatible
from codemods.rules.nbr402_devices_auto_in_notebook import DevicesAutoInNotebook
from codemods.rules.nbr403_launcher_without_num_processes import LauncherWithoutNumProcesses
from codemods.rules.nbr501_logger_version_after_launch import LoggerVersionAfterLaunch
from codemods.rules.nbr502_state_changed_in_training_processes import StateChangedInTrainingProcesses
from codemods.rules.nbr503_tuner_with_forking_strategy import TunerWithForkingStrategy
from codemods.rules.nbr504_lightning_state_after_launch import LightningStateAfterLaunch
from codemods.rules.nbr601_notebook_launch_in_script import NotebookLaunchInScript
from codemods.rules.nbr602_download_in_every_process import DownloadInEveryProcess
from codemods.rules.nbr603_spawn_without_main_guard import SpawnWithoutMainGuard

ALL_RULES: tuple[type[Rule], ...] = (
    CudaInitializedBeforeLaunch,
    CudaProbeBeforeLightningImport,
    AccelerateStateBeforeLauncher,
    BitsandbytesBeforeLauncher,
    DataBuiltInNotebookProcess,
    LaunchWithoutFunction,
    TrainingAtTopLevel,
    FitTwiceOnOneTrainer,
    AccelerateTrainingAtTopLevel,
    StrategyNotNotebookCompatible,
    DevicesAutoInNotebook,
    LauncherWithoutNumProcesses,
    LoggerVersionAfterLaunch,
    StateChangedInTrainingProcesses,
    TunerWithForkingStrategy,
    LightningStateAfterLaunch,
    NotebookLaunchInScript,
    DownloadInEveryProcess,
    SpawnWithoutMainGuard,
)
RULES_BY_CODE = {r.code: r for r in ALL_RULES}

__all__ = ["ALL_RULES", "RULES_BY_CODE", "Applicability", "Finding", "FixAvailability", "Invalid", "Rule", "Valid"]
