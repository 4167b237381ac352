"""`nbrefactor run`: run a notebook in a real Jupyter kernel, forked on N devices, and say whether it works.

The parts, in the order a run goes through them:

- `preamble`: code that runs inside the kernel before the notebook's first cell. It forces
  `ddp_notebook` with the requested devices, caps the work in smoke mode, traces the first cell and
  line that touched CUDA, probes every launch point before it forks, and has each forked child
  record its rank. It imports nothing but the standard library until the notebook imports torch or
  Lightning.
- `runner`: starts the kernel (nbclient + ipykernel), runs the cells one at a time with progress
  (`progress`), a time limit, and cleanup (`processes`: no orphan processes, no held port).
- `report`: turns what the run saw into a verdict, per-cell times, ranks, and the rule that explains
  a failure; as text and as JSON.
- `command`: the click command `run`.

Nothing here imports torch, Lightning or nbclient at module level: `nbrefactor --help` stays fast.
"""
