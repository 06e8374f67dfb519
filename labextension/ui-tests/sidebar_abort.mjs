// Browser check of Abort in the "Qwen" sidebar against a real model server (driven by
// tests/ui/test_sidebar_abort.py, which keeps a long streamed request running on it): the
// request's row shows in the server's card, and its Abort button ends it.
//
// Environment:
//   LAB_URL   JupyterLab URL with its token
//   MODEL     served model name of the server whose running request is aborted
//   READY_FILE  written once the server's card shows: the test starts its request then
//   OUT_DIR, CHROMIUM, SHOT_PREFIX  see harness.mjs
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import { recordFailedRequests, result, runCheck, shot, step } from './harness.mjs';
import { card, openPanel } from './sidebar_parts.mjs';
import { writeFileSync } from 'node:fs';

const { LAB_URL, MODEL, READY_FILE } = process.env;

await runCheck({ prefix: 'abort', viewport: { width: 1400, height: 1000 } }, async page => {
  recordFailedRequests(page);
  const panel = await openPanel(page, LAB_URL);
  const server = card(page, panel, MODEL);
  await server.waitFor();
  writeFileSync(READY_FILE, 'card shown');
  const row = server.locator('.jp-QwenRunning tr[data-request-id]').first();
  await row.waitFor();
  result.requestId = await row.getAttribute('data-request-id');
  result.rowText = await row.textContent();
  await shot(panel, 'running');
  step(`running request ${result.requestId} listed`);

  await row.locator('.jp-QwenRunning-abort').click();
  const toast = page.locator('.Toastify__toast', { hasText: 'Aborted' });
  await toast.first().waitFor();
  result.abortToast = await toast.first().textContent();
  await server.locator(`tr[data-request-id="${result.requestId}"]`).waitFor({ state: 'detached' });
  result.rowsAfterAbort = await server.locator('.jp-QwenRunning tr[data-request-id]').count();
  step('aborted: the row left');
});
