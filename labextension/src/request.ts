/**
 * Talking to nbrefactor's server extension (`{baseUrl}nbrefactor/...`).
 *
 * ServerConnection adds the token and XSRF headers. Errors come back as `NbrefactorError` with a
 * message a user can act on: in particular a 404 means the server part is not installed or not
 * enabled in the Jupyter server's environment, and says so instead of "Not Found".
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { IFixedCell } from './apply';

export const SERVER_MISSING =
  "nbrefactor's server extension is not running in this Jupyter server. " +
  'Install nbrefactor with its lab extra (pip install "nbrefactor[lab]") in the environment ' +
  'that runs Jupyter, then restart Jupyter.';

export class NbrefactorError extends Error {
  constructor(message: string, readonly status: number = 0) {
    super(message);
    this.name = 'NbrefactorError';
  }
}

export interface IVersionInfo {
  name: string;
  version: string;
  api: number;
  fix: boolean;
}

export interface IDiagnostic {
  code: string;
  name: string;
  message: string;
  path: string;
  cell: number;
  cell_id: string | null;
  row: number;
  column: number;
  end_row: number;
  end_column: number;
  applicability: string;
  fix_title: string | null;
}

export interface ICellWarning {
  cell: number;
  cell_id: string | null;
  row: number | null;
  message: string;
}

export interface ICheckReply {
  diagnostics: IDiagnostic[];
  warnings: ICellWarning[];
  skipped: string | null;
  summary: string;
}

export interface IChange {
  code: string;
  cell: number;
  cell_id: string | null;
  message: string;
}

export interface IFixReply {
  changed: boolean;
  summary: string;
  cells_summary: string;
  changes: IChange[];
  changed_cells: (string | null)[];
  cells: IFixedCell[];
  notebook: Record<string, any>;
  diff: string;
  remaining: IDiagnostic[];
  refused: string[];
}

export interface IRequestOptions {
  select?: string[];
  ignore?: string[];
  unsafe_fixes?: boolean;
  devices?: number | null;
}

export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'nbrefactor', endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new NbrefactorError(
      `cannot reach the Jupyter server: ${(error as Error).message ?? error}`
    );
  }
  const text = await response.text();
  let data: any = null;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    if (response.status === 404) {
      throw new NbrefactorError(SERVER_MISSING, 404);
    }
    const message =
      (data && typeof data.message === 'string' && data.message) ||
      `${response.status} ${response.statusText}`;
    throw new NbrefactorError(message, response.status);
  }
  if (data === null) {
    throw new NbrefactorError(
      `the server's reply to ${endpoint} is not JSON (is nbrefactor's server extension installed?)`,
      response.status
    );
  }
  return data as T;
}

export function getVersion(): Promise<IVersionInfo> {
  return requestAPI<IVersionInfo>('version', { method: 'GET' });
}

export function postNotebook<T>(
  endpoint: 'check' | 'fix',
  notebook: Record<string, any>,
  path: string,
  options: IRequestOptions
): Promise<T> {
  return requestAPI<T>(endpoint, {
    method: 'POST',
    body: JSON.stringify({ notebook, path, options })
  });
}
