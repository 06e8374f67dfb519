// Browser check of the control panel, %qwen_panel (driven by tests/ui/test_control_panel.py).
//
// Environment:
//   NOTEBOOK_URL  the notebook in JupyterLab, with the token; its first cell shows the panel,
//                 its second sends requests to `qwen_server` for a while
//   MODEL_PATH    what to type into the model box (the demo model's folder)
//   OUT_DIR, CHROMIUM  see harness.mjs
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import {
  cellBusy,
  openNotebook,
  result,
  risingNumbers,
  runCheck,
  shot,
  step,
  themeAndWidthShots,
  waitCellDone
} from './harness.mjs';

const { NOTEBOOK_URL, MODEL_PATH } = process.env;
const TIMEOUT = 120_000;

async function runCell(page, index) {
  await page.evaluate(i => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    notebook.activeCellIndex = i;
    window.jupyterapp.commands.execute('notebook:run-cell');
  }, index);
}

/** Type into one of the form's fields and leave it, as a user does. */
async function type(panel, field, text) {
  const input = panel.locator(`.jqc-field-${field} input`);
  await input.fill(text);
  await input.press('Tab');
}

async function showForm(page) {
  await runCell(page, 0);
  const panel = page.locator('.jqc-root');
  await panel.locator('.jqc-start').waitFor({ timeout: TIMEOUT });
  await waitCellDone(page, 0, TIMEOUT);
  result.kernelPython = (await page.locator('.jp-OutputArea-output', { hasText: 'kernel python:' })
    .first().textContent()).replace('kernel python:', '').trim();
  result.modelChoices = await panel.locator('.jqc-field-model datalist option')
    .evaluateAll(options => options.map(o => o.value));
  result.memoryNote = await panel.locator('.jqc-field-gpu-memory-utilization + .jqc-note-box').textContent();
  result.prefilledSeqs = await panel.locator('.jqc-field-max-num-seqs input').inputValue();
  await shot(panel, 'form');
  step('form shown');
  return panel;
}

/** A bad value starts nothing: its message shows next to the field; then fix it and Start. */
async function startWithAFix(page, panel) {
  await type(panel, 'model', MODEL_PATH);
  await type(panel, 'max-num-seqs', '0');
  await panel.locator('.jqc-start').click();
  const note = panel.locator('.jqc-field-max-num-seqs + .jqc-note-box .jqc-error');
  await note.waitFor({ timeout: TIMEOUT });
  result.fieldError = await note.textContent();
  result.statusAfterError = await panel.locator('.jqc-status').textContent();
  result.dashboardsAfterError = await panel.locator('.jqw-root').count();
  result.formOverflow = await themeAndWidthShots(page, panel, { prefix: 'error-' });
  step('bad value explained next to its field');

  await type(panel, 'max-num-seqs', '8');
  await panel.locator('.jqc-field-max-num-seqs + .jqc-note-box .jqc-error').waitFor({ state: 'detached' });
  await panel.locator('.jqc-start').click();
  const dashboard = panel.locator('.jqw-root[data-kind="server"]');
  await dashboard.waitFor({ timeout: TIMEOUT });
  result.firstState = await dashboard.getAttribute('data-state');
  step(`dashboard shown (${result.firstState})`);
  await page.waitForSelector('.jqc-root .jqw-root[data-state="ok"]', { timeout: TIMEOUT });
  result.formVisibleWhileServing = await panel.locator('.jqc-form').isVisible();
  result.demoLabel = await dashboard.locator('.jqw-demo').textContent();
  result.snippet = await dashboard.locator('.jqw-code').textContent();
  step('server ok');
  return dashboard;
}

async function watchNumbers(page, dashboard) {
  await runCell(page, 1);
  result.totals = await risingNumbers(page, '.jqc-root .jqw-stat-total .jqw-stat-value', TIMEOUT);
  result.tokensPerS = await dashboard.locator('.jqw-stat-gen .jqw-stat-value').textContent();
  result.requestCellBusy = await cellBusy(page, 1);
  step('numbers move while the second cell sends requests');
}

async function screenshots(page, panel) {
  await panel.scrollIntoViewIfNeeded();
  result.overflow = await themeAndWidthShots(page, panel);
  step('screenshots');
}

async function stop(page, panel, dashboard) {
  await dashboard.locator('.jqw-stop').click();
  await page.waitForSelector('.jqc-root .jqw-root[data-state="stopped"]', { timeout: TIMEOUT });
  await panel.locator('.jqc-form').waitFor({ state: 'visible', timeout: TIMEOUT });
  result.statusAfterStop = await panel.locator('.jqc-status').textContent();
  await waitCellDone(page, 1, TIMEOUT);
  result.requestCellOutput = await page.locator('.jp-Notebook .jp-Cell').nth(1)
    .locator('.jp-OutputArea-output').allTextContents();
  await shot(panel, 'stopped');
  step('stopped: the form is back');
}

await runCheck({ prefix: 'control-panel', viewport: { width: 1280, height: 1000 } }, async page => {
  await openNotebook(page, NOTEBOOK_URL, TIMEOUT);
  const panel = await showForm(page);
  const dashboard = await startWithAFix(page, panel);
  await watchNumbers(page, dashboard);
  await screenshots(page, panel);
  await stop(page, panel, dashboard);
});
