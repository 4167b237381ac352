/**
 * What the user sees: the "Multi-GPU safety" side panel with the diagnostics, badges on the
 * flagged cells, and the diff of a fix.
 */
import { Cell } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import type { ICellWarning, IDiagnostic } from './request';

const GPU_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M3 6h15v2h3v2h-3v4h3v2h-3v2H3zm2 2v8h11V8zm2 2h3v4H7zm4 0h3v4h-3z"/>
    <path d="M5 19h2v2H5zm4 0h2v2H9zm4 0h2v2h-2z"/>
  </g>
</svg>`;

export const gpuIcon = new LabIcon({ name: 'nbrefactor:gpu', svgstr: GPU_SVG });

const FLAGGED = 'jp-nbrefactor-flagged';

/** Cell widgets by id (cells without an id are matched by 1-based number). */
function findCell(panel: NotebookPanel, cellId: string | null, number: number): { cell: Cell; index: number } | null {
  const widgets = panel.content.widgets;
  let index = cellId ? widgets.findIndex(w => w.model.id === cellId) : -1;
  if (index < 0 && !cellId) {
    index = number - 1;
  }
  if (index < 0 || index >= widgets.length) {
    return null;
  }
  return { cell: widgets[index], index };
}

/** Put a badge with the rule codes on each flagged cell; it goes when the cell is edited. */
export function markCells(panel: NotebookPanel, diagnostics: IDiagnostic[]): void {
  clearMarks(panel);
  const byCell = new Map<Cell, IDiagnostic[]>();
  for (const d of diagnostics) {
    const found = findCell(panel, d.cell_id, d.cell);
    if (found) {
      byCell.set(found.cell, [...(byCell.get(found.cell) ?? []), d]);
    }
  }
  byCell.forEach((found, cell) => {
    const codes = Array.from(new Set(found.map(d => d.code)));
    cell.addClass(FLAGGED);
    cell.node.dataset.nbrefactor = codes.join(' ');
    cell.node.title = found.map(d => `line ${d.row}: ${d.code} ${d.message}`).join('\n');
    const onChange = () => {
      unmark(cell);
      cell.model.contentChanged.disconnect(onChange);
    };
    cell.model.contentChanged.connect(onChange);
  });
}

function unmark(cell: Cell): void {
  if (cell.isDisposed) {
    return;
  }
  cell.removeClass(FLAGGED);
  delete cell.node.dataset.nbrefactor;
  cell.node.removeAttribute('title');
}

export function clearMarks(panel: NotebookPanel): void {
  panel.content.widgets.forEach(unmark);
}

/** Select a cell and put the cursor on the finding. */
export function revealCell(panel: NotebookPanel, d: { cell_id: string | null; cell: number; row?: number | null; column?: number }): void {
  const found = findCell(panel, d.cell_id, d.cell);
  if (!found) {
    return;
  }
  const notebook = panel.content;
  notebook.activeCellIndex = found.index;
  notebook.deselectAll();
  void notebook.scrollToItem(found.index, 'center').then(() => {
    const editor = found.cell.editor;
    if (editor && d.row) {
      editor.setCursorPosition({ line: d.row - 1, column: Math.max(0, (d.column ?? 1) - 1) });
    }
  });
}

/** The side panel listing the last check's findings (or a fix's remaining ones). */
export class DiagnosticsPanel extends Widget {
  constructor() {
    super();
    this.id = 'nbrefactor-diagnostics';
    this.addClass('jp-nbrefactor-panel');
    this.title.icon = gpuIcon;
    this.title.caption = 'Multi-GPU safety (nbrefactor)';
    this.node.innerHTML =
      '<div class="jp-nbrefactor-panel-header">Multi-GPU safety</div>' +
      '<p class="jp-nbrefactor-panel-empty">Run "Check multi-GPU safety" on a notebook.</p>';
  }

  showFindings(
    panel: NotebookPanel,
    heading: string,
    diagnostics: IDiagnostic[],
    warnings: ICellWarning[] = [],
    notes: string[] = []
  ): void {
    const node = this.node;
    node.textContent = '';
    const header = document.createElement('div');
    header.className = 'jp-nbrefactor-panel-header';
    header.textContent = 'Multi-GPU safety';
    node.appendChild(header);
    const title = document.createElement('div');
    title.className = 'jp-nbrefactor-panel-title';
    title.textContent = `${panel.context.path}: ${heading}`;
    node.appendChild(title);
    const list = document.createElement('ul');
    list.className = 'jp-nbrefactor-list';
    for (const d of diagnostics) {
      const item = document.createElement('li');
      item.className = 'jp-nbrefactor-item';
      item.dataset.code = d.code;
      item.dataset.cell = String(d.cell);
      const where = document.createElement('span');
      where.className = 'jp-nbrefactor-where';
      where.textContent = `cell ${d.cell}:${d.row}:${d.column}`;
      const code = document.createElement('span');
      code.className = 'jp-nbrefactor-code';
      code.textContent = d.code;
      code.title = d.name;
      const message = document.createElement('span');
      message.className = 'jp-nbrefactor-message';
      message.textContent = d.message;
      item.append(where, ' ', code, ' ', message);
      if (d.fix_title) {
        const fix = document.createElement('div');
        fix.className = 'jp-nbrefactor-fix';
        fix.textContent = `Fix (${d.applicability}): ${d.fix_title}`;
        item.appendChild(fix);
      }
      item.onclick = () => revealCell(panel, d);
      list.appendChild(item);
    }
    for (const w of warnings) {
      const item = document.createElement('li');
      item.className = 'jp-nbrefactor-item jp-nbrefactor-warning';
      item.textContent = `cell ${w.cell}${w.row ? `:${w.row}` : ''}: ${w.message}`;
      item.onclick = () => revealCell(panel, w);
      list.appendChild(item);
    }
    for (const n of notes) {
      const item = document.createElement('li');
      item.className = 'jp-nbrefactor-item jp-nbrefactor-note';
      item.textContent = n;
      list.appendChild(item);
    }
    node.appendChild(list);
  }
}

/** A read-only view of the fix as a unified diff. */
export class DiffView extends Widget {
  constructor(path: string, diff: string, summary: string) {
    super();
    this.addClass('jp-nbrefactor-diff');
    this.title.label = `Multi-GPU fix: ${path.split('/').pop()}`;
    this.title.caption = `nbrefactor's changes to ${path}`;
    this.title.icon = gpuIcon;
    this.title.closable = true;
    const head = document.createElement('div');
    head.className = 'jp-nbrefactor-diff-summary';
    head.textContent = summary;
    const pre = document.createElement('div');
    pre.className = 'jp-nbrefactor-diff-lines';
    for (const line of diff.replace(/\n$/, '').split('\n')) {
      const div = document.createElement('div');
      div.textContent = line.length ? line : ' ';
      div.className = 'jp-nbrefactor-diff-line';
      if (line.startsWith('+++') || line.startsWith('---')) {
        div.classList.add('jp-nbrefactor-diff-file');
      } else if (line.startsWith('@@')) {
        div.classList.add('jp-nbrefactor-diff-hunk');
      } else if (line.startsWith('+')) {
        div.classList.add('jp-nbrefactor-diff-add');
      } else if (line.startsWith('-')) {
        div.classList.add('jp-nbrefactor-diff-del');
      }
      pre.appendChild(div);
    }
    this.node.append(head, pre);
  }
}
