/**
 * Applying a fix to an open notebook's shared model, as one undo step.
 *
 * Pure logic over `@jupyter/ydoc`'s ISharedNotebook (no UI imports), so jest can test it on a
 * standalone YNotebook.
 *
 * - The request carries the cells as they are now (outputs left out: the server never needs them).
 * - Before the request, the frontend takes a fingerprint of every cell's (id, type, source); at
 *   apply time it refuses if the fingerprint changed (the user typed while the server worked).
 * - The reply's cell list is applied by cell id inside one `sharedModel.transact`, fenced by
 *   `undoManager.stopCapturing()` so Y.UndoManager does not merge it with a neighbouring edit:
 *   one "Undo Cell Operation" (`notebook:undo-cell-action`, `z` in command mode) restores the
 *   notebook. Cells the fix did not touch keep their outputs; changed code cells have theirs
 *   cleared (they no longer describe the code) unless `clearChangedOutputs` is off.
 */
import type {
  ISharedCell,
  ISharedCodeCell,
  ISharedNotebook,
  SharedCell
} from '@jupyter/ydoc';

/** A cell as the server returns it. */
export interface IFixedCell {
  id: string | null;
  cell_type: string;
  source: string;
  changed?: boolean;
}

export interface IApplyOptions {
  /** Clear outputs and execution count of code cells whose source changed (default true). */
  clearChangedOutputs?: boolean;
}

export interface IApplyResult {
  rewritten: number;
  inserted: number;
  deleted: number;
  moved: number;
}

/** Thrown when the notebook no longer matches what was sent to the server. */
export class StaleNotebookError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StaleNotebookError';
  }
}

/** A string that changes whenever any cell's id, type, source or position changes. */
export function fingerprint(nb: ISharedNotebook): string {
  return JSON.stringify(
    nb.cells.map(c => [c.id, c.cell_type, c.getSource()])
  );
}

/** The notebook as nbformat JSON for the server, without outputs and attachments. */
export function notebookForRequest(nb: ISharedNotebook): Record<string, any> {
  const cells = nb.cells.map(cell => {
    const json = cell.toJSON() as Record<string, any>;
    json.source = cell.getSource();
    if (json.cell_type === 'code') {
      json.outputs = [];
      json.execution_count = null;
    }
    delete json.attachments;
    return json;
  });
  return {
    cells,
    metadata: nb.getMetadata(),
    nbformat: nb.nbformat ?? 4,
    nbformat_minor: nb.nbformat_minor ?? 5
  };
}

/**
 * Make the shared notebook's cells equal to `target` (ids, order, types, sources) in one
 * transaction. Throws StaleNotebookError, changing nothing, if `expected` (a fingerprint taken
 * before the request) no longer matches.
 *
 * Inside a transaction `nb.cells` is stale: YNotebook updates it from a Y observer that runs when
 * the outermost transaction ends. So every step below works on cell objects captured beforehand
 * and on its own list of ids that mirrors the live Y array, never on `nb.cells` or `nb.moveCell`
 * (which copies the cell found at a stale index).
 */
export function applyFixedCells(
  nb: ISharedNotebook,
  target: IFixedCell[],
  expected: string,
  options: IApplyOptions = {}
): IApplyResult {
  const clearOutputs = options.clearChangedOutputs ?? true;
  if (fingerprint(nb) !== expected) {
    throw new StaleNotebookError(
      'the notebook changed while nbrefactor was working; nothing was applied, run the command again'
    );
  }
  const result: IApplyResult = { rewritten: 0, inserted: 0, deleted: 0, moved: 0 };
  const captured = nb.cells.slice();
  const byIndex = target.some(c => !c.id);
  if (byIndex && target.length !== captured.length) {
    throw new StaleNotebookError(
      'the fixed notebook has cells without ids and a different cell count; nothing was applied'
    );
  }
  // Which existing cell each target cell is (same id, or same position when ids are missing).
  const existing = new Map<IFixedCell, ISharedCell>();
  target.forEach((want, index) => {
    const cell = byIndex
      ? captured[index]
      : captured.find(c => c.id === want.id);
    if (cell && cell.cell_type === want.cell_type) {
      existing.set(want, cell);
    }
  });
  const kept = new Set(existing.values());

  const undoManager = (nb as any).undoManager as
    | { stopCapturing?: () => void }
    | undefined;
  undoManager?.stopCapturing?.();
  nb.transact(() => {
    // 1. New sources, on the cells as they are (before anything moves).
    existing.forEach((cell, want) => {
      if (cell.getSource() !== want.source) {
        replaceSource(cell, want.source);
        result.rewritten++;
        if (clearOutputs && cell.cell_type === 'code') {
          const code = cell as ISharedCodeCell;
          code.setOutputs([]);
          code.execution_count = null;
        }
      }
    });
    // 2. Cells the fix removed (or whose type changed: re-inserted below).
    const live = captured.slice();
    for (let i = live.length - 1; i >= 0; i--) {
      if (!kept.has(live[i])) {
        nb.deleteCell(i);
        live.splice(i, 1);
        result.deleted++;
      }
    }
    // 3. Order and new cells.
    target.forEach((want, index) => {
      const cell = existing.get(want);
      if (cell && live[index] === cell) {
        return;
      }
      if (cell) {
        const from = live.indexOf(cell);
        const json = cell.toJSON();
        nb.deleteCell(from);
        live.splice(from, 1);
        nb.insertCell(index, json as SharedCell.Cell);
        live.splice(index, 0, cell);
        result.moved++;
      } else {
        nb.insertCell(index, {
          id: want.id ?? undefined,
          cell_type: want.cell_type,
          source: want.source,
          metadata: {}
        } as SharedCell.Cell);
        live.splice(index, 0, undefined as unknown as ISharedCell);
        result.inserted++;
      }
    });
  });
  undoManager?.stopCapturing?.();
  return result;
}

/**
 * Replace a cell's text with the smallest edit (common prefix and suffix kept), so cursors and
 * collaborators' positions outside the changed span stay where they were.
 */
export function replaceSource(cell: ISharedCell, text: string): void {
  const old = cell.getSource();
  if (old === text) {
    return;
  }
  let start = 0;
  const max = Math.min(old.length, text.length);
  while (start < max && old[start] === text[start]) {
    start++;
  }
  let end = 0;
  while (
    end < max - start &&
    old[old.length - 1 - end] === text[text.length - 1 - end]
  ) {
    end++;
  }
  cell.updateSource(start, old.length - end, text.slice(start, text.length - end));
}

/** The plain-language count of what `applyFixedCells` did. */
export function describeApply(r: IApplyResult): string {
  const parts: string[] = [];
  const n = (k: number, what: string) => `${k} ${what}${k === 1 ? '' : 's'}`;
  if (r.rewritten) {
    parts.push(`${n(r.rewritten, 'cell')} rewritten`);
  }
  if (r.inserted) {
    parts.push(`${n(r.inserted, 'cell')} added`);
  }
  if (r.deleted) {
    parts.push(`${n(r.deleted, 'cell')} removed`);
  }
  if (r.moved) {
    parts.push(`${n(r.moved, 'cell')} moved`);
  }
  return parts.join(', ');
}
