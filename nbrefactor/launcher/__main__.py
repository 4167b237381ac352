"""`python -m nbrefactor.launcher NB ...`: the `run` command on its own."""

from nbrefactor.launcher.command import run

run(prog_name="nbrefactor run")
