"""`%load_ext nbrefactor`: the fork guard in the user's own kernel (Colab, Kaggle, VS Code, Jupyter).

`tracer` is shared with the launcher's preamble (`nbrefactor run`) and imports only the standard
library; `guard` wraps the launch points; `magics` holds `%nbrefactor check / fix / status`.
Nothing here imports torch: the patches are applied when the notebook imports it.
"""
