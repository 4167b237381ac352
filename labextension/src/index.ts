/**
 * nbrefactor for JupyterLab 4: "Make multi-GPU safe" and "Check multi-GPU safety".
 *
 * Both commands send the open notebook (its in-memory model, unsaved edits included, outputs left
 * out) to nbrefactor's server extension. "Check" shows the findings in a side panel and as badges
 * on the cells. "Make multi-GPU safe" applies the fixed cells to the model by id in one
 * transaction: one Undo Cell Operation restores the notebook; nothing is written to disk until the
 * user saves. Palette items are added here; the notebook toolbar button and the context-menu
 * entries are declared in schema/plugin.json.
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  MainAreaWidget,
  Notification
} from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import {
  StaleNotebookError,
  applyFixedCells,
  describeApply,
  fingerprint,
  notebookForRequest
} from './apply';
import {
  ICheckReply,
  IFixReply,
  IRequestOptions,
  IVersionInfo,
  NbrefactorError,
  SERVER_MISSING,
  getVersion,
  postNotebook
} from './request';
import {
  DiagnosticsPanel,
  DiffView,
  clearMarks,
  gpuIcon,
  markCells
} from './widgets';

const PLUGIN_ID = 'nbrefactor-lab:plugin';

export namespace CommandIDs {
  export const fix = 'nbrefactor:make-multi-gpu-safe';
  export const check = 'nbrefactor:check-multi-gpu-safety';
}

interface ISettings {
  unsafeFixes: boolean;
  clearChangedOutputs: boolean;
  select: string[];
  ignore: string[];
  devices: number | null;
}

const DEFAULTS: ISettings = {
  unsafeFixes: false,
  clearChangedOutputs: true,
  select: ['ALL'],
  ignore: [],
  devices: null
};

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'Make a PyTorch Lightning notebook safe to train on several GPUs with the fork start method.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    labShell: ILabShell | null
  ) => {
    const settings: ISettings = { ...DEFAULTS };
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          const update = () => {
            Object.assign(settings, DEFAULTS, loaded.composite as Partial<ISettings>);
          };
          update();
          loaded.changed.connect(update);
        })
        .catch(reason => {
          console.warn('nbrefactor: cannot load settings, using defaults', reason);
        });
    }

    // Ask the server once, at activation, whether its part is there. The commands report a missing
    // server extension in plain words instead of a 404.
    let server: Promise<IVersionInfo> = getVersion();
    const serverInfo = async (): Promise<IVersionInfo> => {
      try {
        return await server;
      } catch (error) {
        server = getVersion(); // it may have been installed and enabled since
        return await server;
      }
    };

    const requestOptions = (): IRequestOptions => ({
      select: settings.select,
      ignore: settings.ignore,
      unsafe_fixes: settings.unsafeFixes,
      devices: settings.devices
    });

    const panel = new DiagnosticsPanel();
    let panelAdded = false;
    const showPanel = () => {
      if (!panelAdded) {
        app.shell.add(panel, 'right', { rank: 900 });
        panelAdded = true;
      }
      if (labShell) {
        labShell.activateById(panel.id);
      } else {
        app.shell.activateById(panel.id);
      }
    };

    const current = (): NotebookPanel | null => {
      const widget = tracker.currentWidget;
      return widget && !widget.isDisposed ? widget : null;
    };

    const reportError = (what: string, error: unknown) => {
      const message =
        error instanceof NbrefactorError || error instanceof StaleNotebookError
          ? error.message
          : `${(error as Error)?.message ?? error}`;
      Notification.error(`${what}: ${message}`, { autoClose: false });
    };

    app.commands.addCommand(CommandIDs.check, {
      label: 'Check multi-GPU safety',
      caption:
        'Find the code that stops this notebook from training on several GPUs (nbrefactor check)',
      icon: args => (args['isPalette'] ? undefined : gpuIcon),
      isEnabled: () => current() !== null,
      execute: async () => {
        const nbPanel = current();
        if (!nbPanel) {
          return;
        }
        const path = nbPanel.context.path;
        const model = nbPanel.content.model!;
        try {
          await serverInfo();
          const reply = await postNotebook<ICheckReply>(
            'check',
            notebookForRequest(model.sharedModel),
            path,
            requestOptions()
          );
          markCells(nbPanel, reply.diagnostics);
          panel.showFindings(
            nbPanel,
            reply.skipped ?? reply.summary,
            reply.diagnostics,
            reply.warnings
          );
          showPanel();
          if (reply.diagnostics.length === 0) {
            Notification.success(`${path}: ${reply.skipped ?? reply.summary}`, {
              autoClose: 5000
            });
          }
          return reply;
        } catch (error) {
          reportError('Check multi-GPU safety', error);
        }
      }
    });

    app.commands.addCommand(CommandIDs.fix, {
      label: 'Make multi-GPU safe',
      caption:
        'Rewrite this notebook so that it can train on several GPUs (nbrefactor fix); one undo restores it',
      icon: args => (args['isPalette'] ? undefined : gpuIcon),
      isEnabled: () => {
        const nbPanel = current();
        return nbPanel !== null && !nbPanel.content.model?.readOnly;
      },
      execute: async () => {
        const nbPanel = current();
        if (!nbPanel || !nbPanel.content.model) {
          return;
        }
        const path = nbPanel.context.path;
        const shared = nbPanel.content.model.sharedModel;
        const before = fingerprint(shared);
        try {
          const info = await serverInfo();
          if (!info.fix) {
            throw new NbrefactorError(
              `the nbrefactor ${info.version} installed in the Jupyter server cannot fix notebooks yet`
            );
          }
          const reply = await postNotebook<IFixReply>(
            'fix',
            notebookForRequest(shared),
            path,
            requestOptions()
          );
          if (nbPanel.isDisposed) {
            throw new StaleNotebookError('the notebook was closed while nbrefactor was working');
          }
          if (!reply.changed) {
            const left = reply.remaining.length;
            const refused = reply.refused.length
              ? ` Not applied: ${reply.refused.join('; ')}`
              : '';
            if (left || reply.refused.length) {
              panel.showFindings(nbPanel, `${left} finding(s) left after the fix`, reply.remaining, [], reply.refused);
              markCells(nbPanel, reply.remaining);
              Notification.warning(
                `${path}: nothing nbrefactor can change safely; ${left} finding(s) remain.${refused}`,
                {
                  autoClose: false,
                  actions: [{ label: 'Show findings', callback: showPanel }]
                }
              );
            } else {
              Notification.info(`${path} is already multi-GPU safe: nothing to change.`, {
                autoClose: 5000
              });
            }
            return reply;
          }
          const applied = applyFixedCells(shared, reply.cells, before, {
            clearChangedOutputs: settings.clearChangedOutputs
          });
          const after = fingerprint(shared);
          clearMarks(nbPanel);
          const cellsText = reply.cells_summary || describeApply(applied);
          let message = `Made multi-GPU safe${cellsText ? ` (${cellsText})` : ''}: ${reply.summary}.`;
          const left = reply.remaining.length;
          if (left) {
            message += ` ${left} finding(s) left.`;
            markCells(nbPanel, reply.remaining);
          }
          if (reply.refused.length) {
            message += ` Not applied: ${reply.refused.join('; ')}`;
          }
          if (left || panel.isAttached) {
            panel.showFindings(
              nbPanel,
              left ? `fixed; ${left} finding(s) left` : `fixed: ${reply.summary}`,
              reply.remaining,
              [],
              reply.refused
            );
          }
          const actions = [
            {
              label: 'Show diff',
              caption: 'Open the changes as a unified diff',
              callback: () => {
                const view = new MainAreaWidget({
                  content: new DiffView(path, reply.diff, message)
                });
                view.id = `nbrefactor-diff-${Date.now()}`;
                app.shell.add(view, 'main', { mode: 'split-right' });
              }
            },
            {
              label: 'Undo',
              caption: 'Restore the notebook as it was before the fix',
              callback: () => {
                if (nbPanel.isDisposed || fingerprint(shared) !== after) {
                  Notification.warning(
                    'The notebook changed after the fix: use Edit > Undo Cell Operation (z in command mode) step by step.'
                  );
                  return;
                }
                shared.undo();
              }
            }
          ];
          Notification.success(message, { autoClose: 15000, actions });
          return reply;
        } catch (error) {
          reportError('Make multi-GPU safe', error);
        }
      }
    });

    if (palette) {
      const category = 'Notebook Operations';
      palette.addItem({ command: CommandIDs.fix, category, args: { isPalette: true } });
      palette.addItem({ command: CommandIDs.check, category, args: { isPalette: true } });
    }

    // At activation a missing server part is only logged; the commands say it to the user.
    void server.then(
      info => console.debug(`nbrefactor ${info.version}: server extension found`),
      error =>
        console.warn(
          `nbrefactor: ${error instanceof NbrefactorError ? error.message : SERVER_MISSING}`
        )
    );
  }
};

export default plugin;
