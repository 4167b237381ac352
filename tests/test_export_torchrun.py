"""Runnable golden notebooks of the Trainer and Fabric fixes, exported (`nbrefactor export`) and run
under `torchrun --standalone --nproc_per_node 2 ... --accelerator cpu --devices 2`: exit 0, and each
rank's own log (torchrun's per-rank log folder) holds Lightning's `MEMBER: k/2`.

All sixteen took 633 s serial on a shared 2-core machine, 16-60 s each (tests/export_sweep.py runs
the full sweep by hand), so CI runs one case per layout of the exported script that tests/test_export.py does
not already launch (it runs trainer_synthetic, the plain Trainer, and fabric_script_style, Fabric
launched through `launcher(fabric)` with module-level names shared through `global`):

- fabric_already_safe: `print(..., fabric.launch(train))`, the launch inside a print, split into a
  launch on every rank and a print on rank 0;
- trainer_imported_module: the LightningModule imported from a module beside the notebook, and the
  LightningDataModule the fix generates;
- trainer_callback_history: NBR502's hand-back, loaded on rank 0 only (it alone wrote the file);
- trainer_logger_version: a rank-0 print of `trainer.log_dir`, a broadcast every rank must join;
- trainer_tuner_lr_find: a second, one-process Trainer (NBR503's fix tunes `lr_find` on it) beside
  the one that trains, which alone reads the script's options.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.export_sweep import GOLDEN, export, passed, torchrun

LAYOUTS = ["fabric_already_safe", "trainer_imported_module", "trainer_callback_history", "trainer_logger_version", "trainer_tuner_lr_find"]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, tuple[Path | None, str]]:
    """Each case's fixed notebook exported once: name -> (script or None, export's error line)."""
    return {name: export(GOLDEN / name, tmp_path_factory.mktemp(name)) for name in LAYOUTS}


@pytest.mark.parametrize("name", LAYOUTS)
def test_exported_golden_runs_under_torchrun_on_two_ranks(name, scripts):
    script, error = scripts[name]
    assert script is not None, error
    launch = torchrun(script, GOLDEN / name, script.parent)
    assert passed(launch), (launch.returncode, launch.members, launch.output[-3000:])
