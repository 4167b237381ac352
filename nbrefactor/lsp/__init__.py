"""`nbrefactor server`: a language server (LSP 3.17, notebook document sync) over stdio.

`convert` turns what an editor sends (the cells of a notebook document, a jupytext text document,
settings) into nbrefactor's notebook and back (findings -> diagnostics per cell, a fix -> a
workspace edit per cell document); `server` is the pygls server that keeps the open notebooks and
answers the editor. The checker and the fixer run in-process, never the notebook's code.
"""
