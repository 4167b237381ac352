/**
 * applyFixedCells on a standalone YNotebook: one transaction, one undo step, keyed by cell id.
 */
import { YNotebook, ISharedCodeCell } from '@jupyter/ydoc';

import {
  IFixedCell,
  StaleNotebookError,
  applyFixedCells,
  describeApply,
  fingerprint,
  notebookForRequest,
  replaceSource
} from '../apply';

type Cell = { id: string; cell_type: 'code' | 'markdown'; source: string; outputs?: any[] };

const stream = (text: string) => [{ output_type: 'stream', name: 'stdout', text }];

// The example notebook examples/fabric_bad.ipynb, with an output on two cells.
const FABRIC_BAD: Cell[] = [
  { id: 'a1b2', cell_type: 'markdown', source: '# Fabric on two GPUs' },
  { id: 'c3d4', cell_type: 'code', source: 'import torch\nfrom lightning.fabric import Fabric', outputs: stream('imported\n') },
  { id: 'e5f6', cell_type: 'code', source: "# Don't run CUDA-related code before `.launch()`\nx = torch.tensor(1).cuda()\ntorch.cuda.empty_cache()", outputs: stream('cuda\n') },
  { id: 'a7b8', cell_type: 'code', source: 'dataset = make()\ndataloader = load(dataset)' },
  { id: 'c9d0', cell_type: 'code', source: 'def train(fabric):\n    for (batch,) in dataloader:\n        break' },
  { id: 'e1f2', cell_type: 'code', source: 'fabric = Fabric(devices=2)\nfabric.launch(train)' }
];

// What the server answers for it: cell a7b8 removed, e5f6 and c9d0 rewritten.
const FIXED: IFixedCell[] = [
  { id: 'a1b2', cell_type: 'markdown', source: '# Fabric on two GPUs' },
  { id: 'c3d4', cell_type: 'code', source: 'import torch\nfrom lightning.fabric import Fabric' },
  { id: 'e5f6', cell_type: 'code', source: 'torch.cuda.empty_cache()' },
  {
    id: 'c9d0',
    cell_type: 'code',
    source:
      "def train(fabric):\n    # Don't run CUDA-related code before `.launch()`\n    x = torch.tensor(1).cuda()\n    dataset = make()\n    dataloader = load(dataset)\n    for (batch,) in dataloader:\n        break"
  },
  { id: 'e1f2', cell_type: 'code', source: 'fabric = Fabric(devices=2)\nfabric.launch(train)' }
];

const created: YNotebook[] = [];
afterEach(() => {
  // YDocument's awareness keeps a timer running until the document is disposed.
  created.splice(0).forEach(nb => nb.dispose());
});

function notebook(cells: Cell[] = FABRIC_BAD): YNotebook {
  const nb = YNotebook.create({
    data: {
      cells: cells.map(c =>
        c.cell_type === 'code'
          ? { ...c, metadata: {}, execution_count: c.outputs ? 3 : null, outputs: c.outputs ?? [] }
          : { ...c, metadata: {} }
      ) as any,
      metadata: { kernelspec: { name: 'python3', language: 'python', display_name: 'Python 3' } }
    }
  });
  nb.undoManager.clear(); // loading the notebook is not an undo step, as in JupyterLab
  created.push(nb);
  return nb;
}

const state = (nb: YNotebook) =>
  nb.cells.map(c => [c.id, c.cell_type, c.getSource()]);
const outputs = (nb: YNotebook, id: string) =>
  (nb.cells.find(c => c.id === id) as ISharedCodeCell).getOutputs();

describe('applyFixedCells', () => {
  it('applies the fix by cell id: rewritten, removed, others untouched', () => {
    const nb = notebook();
    const result = applyFixedCells(nb, FIXED, fingerprint(nb));
    expect(state(nb)).toEqual(FIXED.map(c => [c.id, c.cell_type, c.source]));
    expect(result).toEqual({ rewritten: 2, inserted: 0, deleted: 1, moved: 0 });
    expect(describeApply(result)).toBe('2 cells rewritten, 1 cell removed');
  });

  it('keeps the outputs of untouched cells and clears those of rewritten ones', () => {
    const nb = notebook();
    applyFixedCells(nb, FIXED, fingerprint(nb));
    expect(outputs(nb, 'c3d4')).toEqual(stream('imported\n'));
    expect((nb.cells[1] as ISharedCodeCell).execution_count).toBe(3);
    expect(outputs(nb, 'e5f6')).toEqual([]);
    expect((nb.cells[2] as ISharedCodeCell).execution_count).toBeNull();
  });

  it('leaves outputs of rewritten cells when told to', () => {
    const nb = notebook();
    applyFixedCells(nb, FIXED, fingerprint(nb), { clearChangedOutputs: false });
    expect(outputs(nb, 'e5f6')).toEqual(stream('cuda\n'));
  });

  it('is undone by one undo, outputs included, and redone by one redo', () => {
    const nb = notebook();
    const before = state(nb);
    applyFixedCells(nb, FIXED, fingerprint(nb));
    const after = state(nb);
    expect(nb.canUndo()).toBe(true);
    nb.undo();
    expect(state(nb)).toEqual(before);
    expect(outputs(nb, 'e5f6')).toEqual(stream('cuda\n'));
    expect(nb.canUndo()).toBe(false);
    nb.redo();
    expect(state(nb)).toEqual(after);
  });

  it('keeps an edit made just before as its own undo step', () => {
    const nb = notebook();
    nb.cells[5].setSource('fabric = Fabric(devices=2)\nfabric.launch(train)  # go');
    const edited = state(nb);
    const target = FIXED.map(c =>
      c.id === 'e1f2' ? { ...c, source: 'fabric = Fabric(devices=2)\nfabric.launch(train)  # go' } : c
    );
    applyFixedCells(nb, target, fingerprint(nb));
    nb.undo();
    expect(state(nb)).toEqual(edited);
  });

  it('refuses, changing nothing, when the notebook changed during the request', () => {
    const nb = notebook();
    const taken = fingerprint(nb);
    nb.cells[1].setSource('import torch  # typed while the server worked');
    const now = state(nb);
    expect(() => applyFixedCells(nb, FIXED, taken)).toThrow(StaleNotebookError);
    expect(state(nb)).toEqual(now);
  });

  it('refuses when a cell was added or moved during the request', () => {
    const nb = notebook();
    const taken = fingerprint(nb);
    nb.insertCell(0, { cell_type: 'code', source: 'x = 1', metadata: {} } as any);
    expect(() => applyFixedCells(nb, FIXED, taken)).toThrow(/changed while nbrefactor was working/);
  });

  it('moves, inserts and changes the type of cells', () => {
    const nb = notebook();
    const target: IFixedCell[] = [
      { id: 'new1', cell_type: 'code', source: 'import lightning as L' },
      FIXED[1],
      { id: 'e1f2', cell_type: 'code', source: 'fabric.launch(train)' },
      { id: 'a1b2', cell_type: 'code', source: '# now code' },
      FIXED[3]
    ];
    const result = applyFixedCells(nb, target, fingerprint(nb));
    expect(state(nb)).toEqual(target.map(c => [c.id, c.cell_type, c.source]));
    expect(result.inserted).toBe(2); // new1, and a1b2 re-created as code
    nb.undo();
    expect(state(nb)).toEqual(FABRIC_BAD.map(c => [c.id, c.cell_type, c.source]));
  });

  it('keeps the outputs of a cell it only moves', () => {
    const nb = notebook();
    const target = [FIXED[1], FIXED[0], ...FIXED.slice(2)];
    applyFixedCells(nb, target, fingerprint(nb));
    expect(nb.cells[0].id).toBe('c3d4');
    expect(outputs(nb, 'c3d4')).toEqual(stream('imported\n'));
  });

  it('changes nothing and records no undo step for an identical target', () => {
    const nb = notebook();
    const same = FABRIC_BAD.map(c => ({ id: c.id, cell_type: c.cell_type, source: c.source }));
    const result = applyFixedCells(nb, same, fingerprint(nb));
    expect(result).toEqual({ rewritten: 0, inserted: 0, deleted: 0, moved: 0 });
    expect(nb.canUndo()).toBe(false);
  });
});

describe('notebookForRequest', () => {
  it('sends sources as strings, without outputs', () => {
    const nb = notebook();
    const json = notebookForRequest(nb);
    expect(json.nbformat).toBe(4);
    expect(json.metadata.kernelspec.language).toBe('python');
    expect(json.cells.map((c: any) => c.id)).toEqual(FABRIC_BAD.map(c => c.id));
    expect(json.cells[1].outputs).toEqual([]);
    expect(json.cells[1].execution_count).toBeNull();
    expect(typeof json.cells[2].source).toBe('string');
    expect(outputs(nb, 'c3d4')).toEqual(stream('imported\n')); // the model is not touched
  });
});

describe('replaceSource', () => {
  it('edits only the span that differs', () => {
    const nb = notebook();
    const cell = nb.cells[4];
    const seen: any[] = [];
    cell.changed.connect((_, change) => seen.push(change.sourceChange));
    replaceSource(cell, 'def train(fabric):\n    setup()\n    for (batch,) in dataloader:\n        break');
    expect(cell.getSource()).toBe('def train(fabric):\n    setup()\n    for (batch,) in dataloader:\n        break');
    expect(seen).toEqual([[{ retain: 23 }, { insert: 'setup()\n    ' }]]);
  });
});
