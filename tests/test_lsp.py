"""`nbrefactor server` driven by a real LSP client (pytest-lsp): the server runs as its own process
(`python -m nbrefactor server`), notebooks are opened the way VS Code opens them (LSP 3.17 notebook
sync, one `vscode-notebook-cell:` document per cell), and what comes back is compared with what the
command line says and writes for the same notebook."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls", reason='the language server needs pygls: pip install "nbrefactor[lsp]"')
pytest_lsp = pytest.importorskip("pytest_lsp")

import attrs  # lsprotocol's types are attrs classes
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

ROOT = Path(__file__).resolve().parent.parent
SERVER = ClientServerConfig(server_command=[sys.executable, "-m", "nbrefactor", "server"])
CAPABILITIES = types.ClientCapabilities(
    notebook_document=types.NotebookDocumentClientCapabilities(
        synchronization=types.NotebookDocumentSyncClientCapabilities(execution_summary_support=False)
    ),
    text_document=types.TextDocumentClientCapabilities(
        publish_diagnostics=types.PublishDiagnosticsClientCapabilities(version_support=True, code_description_support=True, data_support=True),
        hover=types.HoverClientCapabilities(content_format=[types.MarkupKind.Markdown]),
        code_action=types.CodeActionClientCapabilities(
            code_action_literal_support=types.ClientCodeActionLiteralOptions(
                code_action_kind=types.ClientCodeActionKindOptions(value_set=["quickfix", "source.fixAll"])
            ),
            is_preferred_support=True,
        ),
    ),
    workspace=types.WorkspaceClientCapabilities(
        workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True), configuration=False
    ),
)
TRAINER_CELLS = [
    "import torch",
    "x = torch.zeros(1).cuda()",
    'import lightning as L\n\ntrainer = L.Trainer(strategy="ddp_notebook", devices=2)\ntrainer.fit(model)',
]


async def _start(client: LanguageClient, options=None, root: Path | None = None):
    await client.initialize_session(
        types.InitializeParams(
            capabilities=CAPABILITIES,
            initialization_options=options,
            root_uri=root.as_uri() if root else None,
        )
    )


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    await _start(lsp_client)
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=SERVER)
async def utf8_client(lsp_client: LanguageClient):
    """A client that counts positions in UTF-8 bytes (as Neovim prefers)."""
    caps = attrs.evolve(CAPABILITIES, general=types.GeneralClientCapabilities(position_encodings=["utf-8"]))
    await lsp_client.initialize_session(types.InitializeParams(capabilities=caps))
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=SERVER)
async def strict_client(lsp_client: LanguageClient):
    """A server told to ignore NBR101 and to offer unsafe fixes (initializationOptions)."""
    await _start(lsp_client, {"nbrefactor": {"ignore": ["NBR101"], "unsafe-fixes": True}})
    yield
    await lsp_client.shutdown_session()


# --- helpers ----------------------------------------------------------------------------------


class OpenNotebook:
    """A notebook document as the client holds it: cell URIs, texts, versions."""

    def __init__(self, client: LanguageClient, path: Path, cells: list[tuple[str, str]]):
        self.client, self.uri, self.version = client, path.as_uri(), 1
        self.kinds = [k for k, _ in cells]
        self.uris = [f"vscode-notebook-cell:{path}#C{i}" for i in range(len(cells))]
        self.texts = [t for _, t in cells]
        self.versions = [1] * len(cells)
        client.notebook_document_did_open(
            types.DidOpenNotebookDocumentParams(
                notebook_document=types.NotebookDocument(
                    uri=self.uri, notebook_type="jupyter-notebook", version=1,
                    cells=[self._cell(i) for i in range(len(cells))],
                ),
                cell_text_documents=[self._item(i) for i in range(len(cells))],
            )
        )

    def _cell(self, i: int) -> types.NotebookCell:
        kind = types.NotebookCellKind.Code if self.kinds[i] == "code" else types.NotebookCellKind.Markup
        return types.NotebookCell(kind=kind, document=self.uris[i])

    def _item(self, i: int) -> types.TextDocumentItem:
        language = "python" if self.kinds[i] == "code" else "markdown"
        return types.TextDocumentItem(uri=self.uris[i], language_id=language, version=self.versions[i], text=self.texts[i])

    def edit_cell(self, i: int, text: str) -> None:
        old = self.texts[i]
        self.texts[i], self.versions[i] = text, self.versions[i] + 1
        self.version += 1
        lines = old.split("\n")
        whole = types.Range(types.Position(0, 0), types.Position(len(lines) - 1, len(lines[-1])))
        self._change(
            types.NotebookDocumentCellChanges(
                text_content=[
                    types.NotebookDocumentCellContentChanges(
                        document=types.VersionedTextDocumentIdentifier(uri=self.uris[i], version=self.versions[i]),
                        changes=[types.TextDocumentContentChangePartial(range=whole, text=text)],
                    )
                ]
            )
        )

    def add_cell(self, at: int, text: str) -> str:
        uri = f"{self.uris[0].split('#')[0]}#N{len(self.uris)}"
        self.uris.insert(at, uri)
        self.texts.insert(at, text)
        self.kinds.insert(at, "code")
        self.versions.insert(at, 1)
        self.version += 1
        structure = types.NotebookDocumentCellChangeStructure(
            array=types.NotebookCellArrayChange(start=at, delete_count=0, cells=[self._cell(at)]),
            did_open=[self._item(at)],
        )
        self._change(types.NotebookDocumentCellChanges(structure=structure))
        return uri

    def _change(self, cells: types.NotebookDocumentCellChanges) -> None:
        self.client.notebook_document_did_change(
            types.DidChangeNotebookDocumentParams(
                notebook_document=types.VersionedNotebookDocumentIdentifier(uri=self.uri, version=self.version),
                change=types.NotebookDocumentChangeEvent(cells=cells),
            )
        )

    def delete_cell(self, at: int) -> None:
        uri = self.uris.pop(at)
        del self.texts[at], self.kinds[at], self.versions[at]
        self.version += 1
        structure = types.NotebookDocumentCellChangeStructure(
            array=types.NotebookCellArrayChange(start=at, delete_count=1, cells=[]),
            did_close=[types.TextDocumentIdentifier(uri=uri)],
        )
        self._change(types.NotebookDocumentCellChanges(structure=structure))

    def close(self) -> None:
        self.client.notebook_document_did_close(
            types.DidCloseNotebookDocumentParams(
                notebook_document=types.NotebookDocumentIdentifier(uri=self.uri),
                cell_text_documents=[types.TextDocumentIdentifier(uri=u) for u in self.uris],
            )
        )

    def apply(self, edit: types.WorkspaceEdit) -> None:
        """Apply a workspace edit the way an editor does (full-text replacements, versions checked)."""
        for change in edit.document_changes:
            i = self.uris.index(change.text_document.uri)
            assert change.text_document.version == self.versions[i], "the edit is for another version of the cell"
            (text_edit,) = change.edits
            lines = self.texts[i].split("\n")
            assert (text_edit.range.start.line, text_edit.range.start.character) == (0, 0)
            assert (text_edit.range.end.line, text_edit.range.end.character) == (len(lines) - 1, len(lines[-1]))
            self.texts[i] = text_edit.new_text


async def wait_for(condition, what: str, timeout: float = 30.0):
    """Poll until `condition()` is true (the server's notifications arrive on their own)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def codes(client: LanguageClient, uri: str) -> list[str]:
    return [d.code for d in client.diagnostics.get(uri, [])]


def read_cells(path: Path) -> list[tuple[str, str]]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [(c["cell_type"], "".join(c["source"])) for c in nb["cells"]]


def copy_notebook(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copyfile(src, dst)
    return dst


def cli_fix(path: Path, *flags: str) -> list[tuple[str, str]]:
    """The cells `nbrefactor fix` writes for the notebook (on a copy)."""
    copy = path.with_name("cli_" + path.name)
    shutil.copyfile(path, copy)
    subprocess.run([sys.executable, "-m", "nbrefactor", "fix", *flags, str(copy)], check=False, capture_output=True)
    return read_cells(copy)


# --- diagnostics ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_findings_arrive_on_their_cell_at_the_cli_position(client: LanguageClient, tmp_path):
    path = copy_notebook(ROOT / "examples" / "fabric_bad.ipynb", tmp_path)
    nb = OpenNotebook(client, path, read_cells(path))
    await wait_for(lambda: nb.uris[3] in client.diagnostics, "the diagnostics of cell 4")
    await wait_for(lambda: nb.uris[2] in client.diagnostics, "the diagnostics of cell 3")
    (cuda,) = client.diagnostics[nb.uris[2]]
    # the CLI: `examples/fabric_bad.ipynb:cell 3:2:5: NBR101 ...` (1-based row and column)
    assert (cuda.code, cuda.range.start.line, cuda.range.start.character) == ("NBR101", 1, 4)
    assert cuda.range.end == types.Position(1, len("x = torch.tensor(1).cuda()"))
    assert cuda.source == "nbrefactor" and cuda.code_description.href.endswith("#rules")
    assert "before the launch point" in cuda.message
    assert [(d.code, d.range.start.line, d.range.start.character) for d in client.diagnostics[nb.uris[3]]] == [
        ("NBR201", 1, 10),
        ("NBR201", 2, 13),
    ]
    assert not any(u in client.diagnostics for u in (nb.uris[0], nb.uris[1], nb.uris[4], nb.uris[5]))


@pytest.mark.asyncio
async def test_columns_are_counted_in_the_agreed_position_encoding(client: LanguageClient, utf8_client: LanguageClient, tmp_path):
    line = 'label = "\U0001f680 ok"; x = torch.zeros(1).cuda()'  # a rocket: 1 character, 2 UTF-16 units, 4 bytes
    cells = [("code", TRAINER_CELLS[0]), ("code", line), ("code", TRAINER_CELLS[2])]
    starts = {}
    for c in (client, utf8_client):
        nb = OpenNotebook(c, tmp_path / "rocket.ipynb", cells)
        await wait_for(lambda c=c, nb=nb: "NBR101" in codes(c, nb.uris[1]), "NBR101 on cell 2")
        (d,) = c.diagnostics[nb.uris[1]]
        starts[c] = d.range.start.character
    column = line.index("x = ") + 4  # the character where `torch.zeros(1).cuda()` starts
    assert (starts[client], starts[utf8_client]) == (column + 1, column + 3)


@pytest.mark.asyncio
async def test_editing_a_cell_clears_and_adds_findings(client: LanguageClient, tmp_path):
    nb = OpenNotebook(client, tmp_path / "trainer.ipynb", [("code", t) for t in TRAINER_CELLS])
    await wait_for(lambda: "NBR101" in codes(client, nb.uris[1]), "NBR101 on cell 2")
    nb.edit_cell(1, "x = torch.zeros(1)")
    await wait_for(lambda: codes(client, nb.uris[1]) == [], "cell 2 to become clean")
    new = nb.add_cell(1, "import os\ny = torch.ones(2).cuda()")
    await wait_for(lambda: "NBR101" in codes(client, new), "NBR101 on the new cell")
    (d,) = client.diagnostics[new]
    assert (d.range.start.line, d.range.start.character) == (1, 4)
    assert codes(client, nb.uris[2]) == []  # the old cell 2, now cell 3, stays clean
    nb.edit_cell(2, "y = torch.ones(2).cuda()")  # a finding on the old cell 2 too
    await wait_for(lambda: "NBR101" in codes(client, nb.uris[2]) and "NBR101" in codes(client, new), "NBR101 on both cells")
    nb.delete_cell(1)
    await wait_for(lambda: codes(client, new) == [], "the deleted cell's diagnostics to be cleared")
    assert codes(client, nb.uris[1]) == ["NBR101"]
    nb.close()
    await wait_for(lambda: codes(client, nb.uris[1]) == [], "the closed notebook's diagnostics to be cleared")


@pytest.mark.asyncio
async def test_a_cell_with_a_syntax_error_is_said_to_be_skipped(client: LanguageClient, tmp_path):
    """`nbrefactor check` notes a cell it cannot parse (its findings are missing); so does the server,
    on that cell, and the other cells' findings still arrive. Fixing the cell clears the note."""
    nb = OpenNotebook(client, tmp_path / "syntax.ipynb", [("code", "x = 1\ndef f(:\n    pass"), *[("code", t) for t in TRAINER_CELLS]])
    await wait_for(lambda: "NBR101" in codes(client, nb.uris[2]), "NBR101 on cell 3")
    await wait_for(lambda: nb.uris[0] in client.diagnostics, "the note on cell 1")
    (note,) = client.diagnostics[nb.uris[0]]
    assert note.severity == types.DiagnosticSeverity.Information and note.code is None
    assert note.message == "nbrefactor: cell skipped, not Python: invalid syntax" and note.range.start.line == 1
    nb.edit_cell(0, "x = 1")
    await wait_for(lambda: not client.diagnostics.get(nb.uris[0]), "the note to be cleared")
    text = "".join(f"# %%\n{t}\n\n" for t in ["x = 1\ndef f(:\n    pass", *TRAINER_CELLS])  # a jupytext script: at its file line
    script = tmp_path / "syntax.py"
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=script.as_uri(), language_id="python", version=1, text=text)))
    await wait_for(lambda: script.as_uri() in client.diagnostics, "the script's diagnostics")
    (note,) = [d for d in client.diagnostics[script.as_uri()] if d.code is None]
    assert note.message == "nbrefactor: cell skipped, not Python: invalid syntax"
    assert note.range.start.line == text.split("\n").index("def f(:")


@pytest.mark.asyncio
async def test_a_cell_the_client_did_not_send_is_never_read_from_disk(client: LanguageClient, tmp_path):
    """A notebook whose first cell's text document was left out of didOpen, its URI naming a file on
    disk: the server checks an empty cell (pygls's `get_text_document` would read that file), and the
    cells it was sent are checked as usual, with no error."""
    on_disk = tmp_path / "secret.py"
    on_disk.write_text("import torch\nz = torch.zeros(1).cuda()\n", encoding="utf-8")
    sent = ["import torch\ny = torch.ones(1).cuda()", TRAINER_CELLS[2]]
    uris = [on_disk.as_uri(), *(f"vscode-notebook-cell:{tmp_path}/partial.ipynb#C{i}" for i in (1, 2))]
    client.notebook_document_did_open(
        types.DidOpenNotebookDocumentParams(
            notebook_document=types.NotebookDocument(
                uri=(tmp_path / "partial.ipynb").as_uri(), notebook_type="jupyter-notebook", version=1,
                cells=[types.NotebookCell(kind=types.NotebookCellKind.Code, document=u) for u in uris],
            ),
            cell_text_documents=[types.TextDocumentItem(uri=u, language_id="python", version=1, text=t) for u, t in zip(uris[1:], sent)],
        )
    )
    await wait_for(lambda: "NBR101" in codes(client, uris[1]), "NBR101 on the cell that was sent")
    await asyncio.sleep(0.3)
    assert codes(client, uris[0]) == []
    assert not [m.message for m in client.log_messages if m.type == types.MessageType.Error]


@pytest.mark.asyncio
async def test_a_newer_version_supersedes_the_one_in_flight(client: LanguageClient, tmp_path):
    nb = OpenNotebook(client, tmp_path / "trainer.ipynb", [("code", t) for t in TRAINER_CELLS])
    await wait_for(lambda: "NBR101" in codes(client, nb.uris[1]), "NBR101 on cell 2")
    published = record_diagnostics(client, nb.uris[1])
    for text in ("x = 1", "x = 2", "x = torch.zeros(3).cuda()"):  # faster than the debounce
        nb.edit_cell(1, text)
    await wait_for(lambda: published, "the diagnostics of the last version")
    await asyncio.sleep(1.0)  # time enough for a check of an earlier version to come back, if it did
    assert [(v, [d.code for d in ds]) for v, ds in published] == [(4, ["NBR101"])]


def record_diagnostics(client: LanguageClient, uri: str) -> list:
    """(version, diagnostics) of every publishDiagnostics for `uri` from now on."""
    features = client.protocol.fm.features
    handler = features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS]
    seen: list = []

    def record(params: types.PublishDiagnosticsParams):
        if params.uri == uri:
            seen.append((params.version, params.diagnostics))
        return handler(params)

    features[types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS] = record
    return seen


# --- code actions -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fix_all_gives_the_cells_nbrefactor_fix_writes(client: LanguageClient, tmp_path):
    path = copy_notebook(ROOT / "examples" / "fabric_bad.ipynb", tmp_path)
    nb = OpenNotebook(client, path, read_cells(path))
    await wait_for(lambda: nb.uris[2] in client.diagnostics, "the diagnostics of cell 3")
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=nb.uris[2]),
            range=types.Range(types.Position(0, 0), types.Position(0, 0)),
            context=types.CodeActionContext(diagnostics=[], only=["source.fixAll"]),
        )
    )
    (fix_all,) = actions
    assert fix_all.kind == "source.fixAll.nbrefactor"
    nb.apply(fix_all.edit)
    expected = cli_fix(path)
    assert expected != read_cells(path), "the CLI changed nothing: the comparison would prove nothing"
    assert nb.texts[3] == ""  # `nbrefactor fix` deletes cell 4; a workspace edit can only empty it
    ours = [(k, t) for k, t in zip(nb.kinds, nb.texts) if t or (k, t) in expected]
    assert ours == expected


@pytest.mark.asyncio
async def test_quick_fix_for_a_finding_is_preferred_and_fixes_it(client: LanguageClient, tmp_path):
    path = copy_notebook(ROOT / "examples" / "fabric_bad.ipynb", tmp_path)
    nb = OpenNotebook(client, path, read_cells(path))
    await wait_for(lambda: nb.uris[2] in client.diagnostics, "the diagnostics of cell 3")
    (cuda,) = client.diagnostics[nb.uris[2]]
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=nb.uris[2]),
            range=cuda.range,
            context=types.CodeActionContext(diagnostics=[cuda], only=["quickfix"]),
        )
    )
    (action,) = actions
    assert action.title == "Fix NBR101 (nbrefactor)" and action.kind == "quickfix" and action.is_preferred
    assert [d.code for d in action.diagnostics] == ["NBR101"]
    nb.apply(action.edit)
    assert ".cuda()" not in "\n".join(nb.texts)
    assert cli_fix(path, "--select", "NBR101") == [(k, t) for k, t in zip(nb.kinds, nb.texts) if t]


@pytest.mark.asyncio
async def test_unsafe_fixes_are_offered_only_when_enabled(client: LanguageClient, strict_client: LanguageClient, tmp_path):
    path = copy_notebook(ROOT / "golden" / "accelerate_cuda_model_args" / "input.ipynb", tmp_path)
    for c in (client, strict_client):
        c.nb = OpenNotebook(c, path, read_cells(path))
    await wait_for(lambda: client.nb.uris[2] in client.diagnostics, "the plain server's diagnostics")
    await wait_for(lambda: strict_client.nb.uris[2] in strict_client.diagnostics, "the strict server's diagnostics")
    assert sorted(codes(client, client.nb.uris[2])) == ["NBR101", "NBR102"]
    assert codes(strict_client, strict_client.nb.uris[2]) == ["NBR102"]  # ignore = ["NBR101"]
    titles = {}
    for c in (client, strict_client):
        actions = await c.text_document_code_action_async(
            types.CodeActionParams(
                text_document=types.TextDocumentIdentifier(uri=c.nb.uris[2]),
                range=types.Range(types.Position(0, 0), types.Position(10, 0)),
                context=types.CodeActionContext(diagnostics=[], only=["quickfix"]),
            )
        )
        titles[c] = sorted(a.title for a in actions)
    assert titles[client] == ["Fix NBR102 (nbrefactor)"]  # NBR101's fix here is unsafe: not offered
    # the strict server ignores NBR101 but offers unsafe fixes: turn NBR101 back on to see it offered
    strict_client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"nbrefactor": {"ignore": [], "unsafeFixes": True}})
    )
    await wait_for(lambda: "NBR101" in codes(strict_client, strict_client.nb.uris[2]), "NBR101 after the settings change")
    actions = await strict_client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=strict_client.nb.uris[2]),
            range=types.Range(types.Position(0, 0), types.Position(10, 0)),
            context=types.CodeActionContext(diagnostics=[], only=["quickfix"]),
        )
    )
    unsafe = [a for a in actions if "NBR101" in a.title]
    assert [a.title for a in unsafe] == ["Fix NBR101 (nbrefactor, unsafe fix)"] and not unsafe[0].is_preferred


@pytest.mark.asyncio
async def test_a_configuration_change_without_settings_keeps_the_initialization_options(strict_client: LanguageClient, tmp_path):
    """`workspace/didChangeConfiguration` with `settings: null` (a client that pulls its settings
    says only that something changed) does not reset the settings to the defaults."""
    cells = [("code", "import torch"), ("code", "ok = torch.cuda.is_available()\nx = torch.zeros(1).cuda()"), ("code", TRAINER_CELLS[2])]
    nb = OpenNotebook(strict_client, tmp_path / "strict.ipynb", cells)
    await wait_for(lambda: "NBR102" in codes(strict_client, nb.uris[1]), "NBR102 on cell 2")
    assert codes(strict_client, nb.uris[1]) == ["NBR102"]  # ignore = ["NBR101"]
    strict_client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    nb.edit_cell(1, "x = torch.zeros(1).cuda()")
    await wait_for(lambda: "NBR102" not in codes(strict_client, nb.uris[1]), "the edit's diagnostics")
    assert codes(strict_client, nb.uris[1]) == []  # NBR101 still ignored


@pytest.mark.asyncio
async def test_a_fix_that_needs_devices_is_offered_only_with_the_devices_setting(client: LanguageClient, tmp_path):
    cells = [("code", "import lightning as L\nfrom model import Model"),
             ("code", 'model = Model()\ntrainer = L.Trainer(accelerator="gpu", strategy="ddp_notebook")\ntrainer.fit(model)')]
    nb = OpenNotebook(client, tmp_path / "auto.ipynb", cells)
    await wait_for(lambda: "NBR402" in codes(client, nb.uris[1]), "NBR402 on cell 2")

    async def titles() -> list[str]:
        actions = await client.text_document_code_action_async(
            types.CodeActionParams(
                text_document=types.TextDocumentIdentifier(uri=nb.uris[1]),
                range=types.Range(types.Position(1, 0), types.Position(1, 10)),
                context=types.CodeActionContext(diagnostics=[], only=["quickfix"]),
            )
        )
        return [a.title for a in actions or []]

    assert await titles() == []
    rechecked = record_diagnostics(client, nb.uris[1])
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"nbrefactor": {"devices": 4}}))
    await wait_for(lambda: rechecked, "the re-check with the new settings")
    assert await titles() == ["Fix NBR402 (nbrefactor)"]
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=nb.uris[1]),
            range=types.Range(types.Position(1, 0), types.Position(1, 10)),
            context=types.CodeActionContext(diagnostics=[], only=["quickfix"]),
        )
    )
    nb.apply(actions[0].edit)
    assert "devices=4" in nb.texts[1]


# --- settings, hover, scripts, errors ---------------------------------------------------------


@pytest.mark.asyncio
async def test_project_settings_apply_and_client_settings_win(client: LanguageClient, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = ["NBR201"]\n', encoding="utf-8")
    path = copy_notebook(ROOT / "examples" / "fabric_bad.ipynb", tmp_path)
    nb = OpenNotebook(client, path, read_cells(path))
    await wait_for(lambda: nb.uris[2] in client.diagnostics, "the diagnostics of cell 3")
    await asyncio.sleep(0.3)
    assert nb.uris[3] not in client.diagnostics  # NBR201 ignored by [tool.nbrefactor]
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"nbrefactor": {"ignore": ["NBR101"]}}))
    await wait_for(lambda: codes(client, nb.uris[3]), "NBR201 once the client's ignore replaces the project's")
    assert codes(client, nb.uris[3]) == ["NBR201", "NBR201"]
    assert codes(client, nb.uris[2]) == []  # published in the same round, before cell 4's


@pytest.mark.asyncio
async def test_an_unknown_rule_selector_is_said_and_does_not_silence_the_checks(client: LanguageClient, tmp_path):
    """select = ["BOGUS"] matches no rule: refused as `nbrefactor check --select BOGUS` refuses it,
    in one line, rather than checking nothing and showing a clean notebook."""
    nb = OpenNotebook(client, tmp_path / "trainer.ipynb", [("code", t) for t in TRAINER_CELLS])
    await wait_for(lambda: "NBR101" in codes(client, nb.uris[1]), "NBR101 on cell 2")
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"nbrefactor": {"select": ["BOGUS"]}}))
    await wait_for(lambda: any("`BOGUS`" in m.message for m in client.log_messages), "the setting's problem in the log")
    (said,) = [m.message for m in client.log_messages if "`BOGUS`" in m.message]
    assert said == "nbrefactor: setting select: unknown rule selector `BOGUS` (see `nbrefactor rules`); the setting is ignored"
    await asyncio.sleep(0.5)
    assert "NBR101" in codes(client, nb.uris[1])  # the editor's setting ignored: the project's selection applies
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = ["NBR9"]\n', encoding="utf-8")
    other = OpenNotebook(client, project / "trainer.ipynb", [("code", t) for t in TRAINER_CELLS])
    await wait_for(lambda: other.uris[0] in client.diagnostics, "the problem diagnostic of [tool.nbrefactor]")
    (problem,) = client.diagnostics[other.uris[0]]
    assert "could not check" in problem.message and "[tool.nbrefactor] ignore: unknown rule selector `NBR9`" in problem.message


@pytest.mark.asyncio
async def test_saving_rereads_the_project_settings(client: LanguageClient, tmp_path):
    nb = OpenNotebook(client, tmp_path / "trainer.ipynb", [("code", t) for t in TRAINER_CELLS])
    await wait_for(lambda: "NBR101" in codes(client, nb.uris[1]), "NBR101 on cell 2")
    (tmp_path / "pyproject.toml").write_text('[tool.nbrefactor]\nignore = ["NBR101"]\n', encoding="utf-8")
    client.notebook_document_did_save(
        types.DidSaveNotebookDocumentParams(notebook_document=types.NotebookDocumentIdentifier(uri=nb.uri))
    )
    await wait_for(lambda: codes(client, nb.uris[1]) == [], "NBR101 to go once [tool.nbrefactor] ignores it")


@pytest.mark.asyncio
async def test_hover_on_a_finding_and_on_a_noqa_code_shows_the_rule_docs(client: LanguageClient, tmp_path):
    cells = [("code", t) for t in TRAINER_CELLS] + [("code", "y = torch.ones(1)  # noqa: NBR201")]
    nb = OpenNotebook(client, tmp_path / "trainer.ipynb", cells)
    await wait_for(lambda: "NBR101" in codes(client, nb.uris[1]), "NBR101 on cell 2")
    command = [sys.executable, "-m", "nbrefactor", "rules", "NBR101"]
    rules = (await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, check=True)).stdout
    hover = await client.text_document_hover_async(
        types.HoverParams(text_document=types.TextDocumentIdentifier(uri=nb.uris[1]), position=types.Position(0, 20))
    )
    assert hover.contents.kind == "markdown" and hover.contents.value.strip() == rules.strip()
    hover = await client.text_document_hover_async(
        types.HoverParams(text_document=types.TextDocumentIdentifier(uri=nb.uris[3]), position=types.Position(0, 30))
    )
    assert "(NBR201)" in hover.contents.value and "## What it does" in hover.contents.value
    nothing = await client.text_document_hover_async(
        types.HoverParams(text_document=types.TextDocumentIdentifier(uri=nb.uris[0]), position=types.Position(0, 3))
    )
    assert nothing is None


@pytest.mark.asyncio
async def test_a_jupytext_script_gets_diagnostics_at_file_positions(client: LanguageClient, tmp_path):
    code = [t for k, t in read_cells(ROOT / "examples" / "fabric_bad.ipynb") if k == "code"]
    text = "\n".join(f"# %%\n{t}\n" for t in code)
    line = text.split("\n").index("x = torch.tensor(1).cuda()")
    path = tmp_path / "my notebooks" / "train.py"  # a space: the URI is percent-encoded
    path.parent.mkdir()
    path.write_text(text, encoding="utf-8")
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=path.as_uri(), language_id="python", version=1, text=text))
    )
    await wait_for(lambda: path.as_uri() in client.diagnostics, "the script's diagnostics")
    found = [(d.code, d.range.start.line, d.range.start.character) for d in client.diagnostics[path.as_uri()]]
    assert ("NBR101", line, 4) in found
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=path.as_uri()),
            range=types.Range(types.Position(0, 0), types.Position(0, 0)),
            context=types.CodeActionContext(diagnostics=[], only=["source.fixAll"]),
        )
    )
    (change,) = actions[0].edit.document_changes if actions else pytest.fail("no fix-all for the script")
    assert change.text_document.uri == path.as_uri() and change.edits[0].range.end == types.Position(text.count("\n"), 0)
    fixed = tmp_path / "cli_train.py"
    fixed.write_text(text, encoding="utf-8")
    await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "nbrefactor", "fix", str(fixed)], check=False, capture_output=True)
    assert fixed.read_text(encoding="utf-8") != text, "the CLI changed nothing: the comparison would prove nothing"
    assert change.edits[0].new_text == fixed.read_text(encoding="utf-8")
    plain = tmp_path / "plain.py"
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=plain.as_uri(), language_id="python", version=1, text="x = torch.zeros(1).cuda()\n"))
    )
    await asyncio.sleep(0.5)
    assert plain.as_uri() not in client.diagnostics  # not a notebook: not ours


@pytest.mark.asyncio
async def test_a_jupyterlab_lsp_virtual_document_is_checked_as_a_notebook(client: LanguageClient, tmp_path):
    """jupyterlab-lsp sends a notebook as one document of its cells joined by blank lines."""
    uri = (tmp_path / ".virtual_documents" / "fabric_bad.ipynb").as_uri()
    text = "\n\n\n".join(t for k, t in read_cells(ROOT / "examples" / "fabric_bad.ipynb") if k == "code") + "\n"
    line = text.split("\n").index("x = torch.tensor(1).cuda()")
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))
    await wait_for(lambda: uri in client.diagnostics, "the virtual document's diagnostics")
    found = [(d.code, d.range.start.line, d.range.start.character) for d in client.diagnostics[uri]]
    assert ("NBR101", line, 4) in found
    actions = await client.text_document_code_action_async(
        types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            range=types.Range(types.Position(line, 4), types.Position(line, 4)),
            context=types.CodeActionContext(diagnostics=[], only=["quickfix"]),
        )
    )
    (action,) = [a for a in actions if "NBR101" in a.title]
    (change,) = action.edit.document_changes
    assert (change.text_document.uri, change.text_document.version) == (uri, 1)
    assert ".cuda()" not in change.edits[0].new_text


@pytest.mark.asyncio
async def test_a_notebook_beyond_the_limits_is_reported_and_the_server_goes_on(client: LanguageClient, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "pyproject.toml").write_text("[tool.nbrefactor]\nmax-cell-lines = 2\n", encoding="utf-8")
    nb = OpenNotebook(client, big / "big.ipynb", [("code", "import torch\nx = 1\ny = 2\nz = 3")])
    await wait_for(lambda: nb.uris[0] in client.diagnostics, "the problem diagnostic")
    (problem,) = client.diagnostics[nb.uris[0]]
    assert "could not check" in problem.message and "max-cell-lines" in problem.message
    assert any("max-cell-lines" in m.message for m in client.log_messages)
    ok = OpenNotebook(client, tmp_path / "ok.ipynb", [("code", t) for t in TRAINER_CELLS])
    await wait_for(lambda: "NBR101" in codes(client, ok.uris[1]), "a finding on the next notebook")


def test_server_without_pygls_says_how_to_install(tmp_path):
    """With pygls hidden, one `error:` line and exit 2."""
    (tmp_path / "pygls.py").write_text("raise ImportError('hidden')\n", encoding="utf-8")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "nbrefactor", "server"], check=False, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == 'error: `nbrefactor server` needs pygls: pip install "nbrefactor[lsp]"'
