"""NBR303: `trainer.fit` called twice on one Trainer."""

from __future__ import annotations

import libcst as cst

from codemods.rules.base import Applicability, Finding, FixAvailability, Invalid, Rule


class FitTwiceOnOneTrainer(Rule):
    """
    ## What it does
    Finds a second `trainer.fit(...)` on the same Trainer object: two fit calls with no new
    `Trainer(...)` in between, or one fit inside a loop whose Trainer was built before the loop.

    ## Why is this bad?
    With a fork-based strategy (`ddp_notebook`), each `fit` runs in new processes, and the Trainer
    in the notebook only gets the model's weights back: optimizer, scheduler and loop state stay
    behind. Lightning therefore raises `NotImplementedError: Calling trainer.fit() twice on the same
    Trainer instance using a spawn-based strategy is not supported`.

    ## Example
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, max_epochs=5)
    trainer.fit(model)
    trainer.fit(model)  # train some more
    ```

    ## Use instead
    ```python
    trainer = L.Trainer(accelerator="cuda", devices=2, max_epochs=10)
    trainer.fit(model, ckpt_path=checkpoint)  # a new Trainer, resuming from a checkpoint
    ```

    ## Fix safety
    No fix: whether to resume (`ckpt_path`) or start over is the author's choice.
    """

    code = "NBR303"
    name = "fit-twice-on-one-trainer"
    summary = "`trainer.fit` is called twice on one Trainer"
    applicability = Applicability.NONE
    fix_availability = FixAvailability.NONE
    context_reason = "not scripts: a second `fit` works with `strategy=\"ddp\"`; a forking strategy in a script is NBR601"

    VALID = [
        """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
trainer.test(model)
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
""",
        """
import lightning as L
for fold in range(5):
    trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
    trainer.fit(model)
""",
    ]
    INVALID = [
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
trainer.fit(model)
# %%
trainer.fit(model)
""",
            at=(2, 1, 1),
        ),
        Invalid(
            """
import lightning as L
trainer = L.Trainer(accelerator="cuda", devices=2, strategy="ddp_notebook")
for fold in range(5):
    trainer.fit(model)
""",
            at=(1, 4, 5),
            message_contains="loop",
        ),
    ]

    def check(self, facts):
        fits = [lp for lp in facts.launches if lp.kind == "trainer.fit" and lp.via is None
                and isinstance(lp.node.func, cst.Attribute) and isinstance(lp.node.func.value, cst.Name)]
        last_fit: dict[str, int] = {}
        for lp in fits:
            owner = lp.node.func.value.value
            st = facts.statements[lp.statement]
            in_loop = isinstance(st.node, (cst.For, cst.While))
            if in_loop and owner not in st.defines:
                yield Finding(lp.node, f"`{owner}.fit()` runs on every pass of the loop with one Trainer; fork-based strategies cannot fit one Trainer twice: build a new Trainer inside the loop")
                continue
            previous = last_fit.get(owner)
            if previous is not None and not facts.defined_between(owner, previous, lp.statement):
                yield Finding(lp.node, f"`{owner}.fit()` is called a second time on the same Trainer; with `ddp_notebook` this raises NotImplementedError: build a new Trainer (and pass `ckpt_path=` to resume)")
            last_fit[owner] = lp.statement
