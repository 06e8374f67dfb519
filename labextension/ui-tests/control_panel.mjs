// Browser check of the control panel, %qwen_panel (driven by tests/ui/test_control_panel.py).
//
// Environment:
//   NOTEBOOK_URL  the notebook in JupyterLab, with the token; its first cell shows the panel,
//                 its second sends requests to `qwen_server` for a while
//   MODEL_PATH    what to type into the model box (the demo model's folder)
//   OUT_DIR       where screenshots go
//   CHROMIUM      the Chromium binary (Debian's /usr/bin/chromium)
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import { chromium } from 'playwright-core';
import path from 'node:path';

const { NOTEBOOK_URL, MODEL_PATH, OUT_DIR, CHROMIUM } = process.env;
const TIMEOUT = 120_000;
const result = { steps: [], screenshots: [], pageErrors: [] };
const t0 = Date.now();

function step(name) {
  const line = `${((Date.now() - t0) / 1000).toFixed(1)}s ${name}`;
  result.steps.push(line);
  console.error(line);
}

async function shot(target, name) {
  const file = path.join(OUT_DIR, `control-panel-${name}.png`);
  await target.screenshot({ path: file });
  result.screenshots.push(file);
}

async function setTheme(page, theme) {
  await page.evaluate(t => window.jupyterapp.commands.execute('apputils:change-theme', { theme: t }), theme);
  await page.waitForFunction(t => document.body.dataset.jpThemeName === t, theme);
  await page.waitForTimeout(500);
}

async function runCell(page, index) {
  await page.evaluate(i => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    notebook.activeCellIndex = i;
    window.jupyterapp.commands.execute('notebook:run-cell');
  }, index);
}

function cellBusy(page, index) {
  return page.locator('.jp-Notebook .jp-Cell').nth(index).locator('.jp-InputPrompt').textContent()
    .then(text => text.includes('*'));
}

async function openNotebook(page) {
  await page.goto(NOTEBOOK_URL);
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached' });
  await page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell').first().waitFor();
  await page.waitForFunction(
    () => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle',
    null, { timeout: TIMEOUT }
  );
  step('notebook open, kernel idle');
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
  await page.waitForFunction(() => !document.querySelectorAll('.jp-Notebook .jp-Cell')[0]
    .querySelector('.jp-InputPrompt').textContent.includes('*'), null, { timeout: TIMEOUT });
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
  await shot(panel, 'error');
  await setTheme(page, 'JupyterLab Dark');
  await shot(panel, 'error-dark');
  await setTheme(page, 'JupyterLab Light');
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
  const selector = '.jqc-root .jqw-stat-total .jqw-stat-value';
  const read = async () => Number((await dashboard.locator('.jqw-stat-total .jqw-stat-value').textContent())
    .replace(/[^\d]/g, '') || 0);
  const totals = [await read()];
  while (totals.length < 4) {
    const last = totals[totals.length - 1];
    await page.waitForFunction(
      ([sel, before]) => Number(document.querySelector(sel).textContent.replace(/[^\d]/g, '') || 0) > before,
      [selector, last], { timeout: TIMEOUT }
    );
    totals.push(await read());
  }
  result.totals = totals;
  result.tokensPerS = await dashboard.locator('.jqw-stat-gen .jqw-stat-value').textContent();
  result.requestCellBusy = await cellBusy(page, 1);
  step('numbers move while the second cell sends requests');
}

async function screenshots(page, panel) {
  await panel.scrollIntoViewIfNeeded();
  await shot(panel, 'light');
  await setTheme(page, 'JupyterLab Dark');
  await shot(panel, 'dark');
  await setTheme(page, 'JupyterLab Light');
  step('screenshots');
}

async function stop(page, panel, dashboard) {
  await dashboard.locator('.jqw-stop').click();
  await page.waitForSelector('.jqc-root .jqw-root[data-state="stopped"]', { timeout: TIMEOUT });
  await panel.locator('.jqc-form').waitFor({ state: 'visible', timeout: TIMEOUT });
  result.statusAfterStop = await panel.locator('.jqc-status').textContent();
  await page.waitForFunction(() => !document.querySelectorAll('.jp-Notebook .jp-Cell')[1]
    .querySelector('.jp-InputPrompt').textContent.includes('*'), null, { timeout: TIMEOUT });
  result.requestCellOutput = await page.locator('.jp-Notebook .jp-Cell').nth(1)
    .locator('.jp-OutputArea-output').allTextContents();
  await shot(panel, 'stopped');
  step('stopped: the form is back');
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-sync']
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  page = await context.newPage();
  page.setDefaultTimeout(60_000);
  page.on('pageerror', err => result.pageErrors.push(String(err)));
  await openNotebook(page);
  const panel = await showForm(page);
  const dashboard = await startWithAFix(page, panel);
  await watchNumbers(page, dashboard);
  await screenshots(page, panel);
  await stop(page, panel, dashboard);
  result.ok = true;
} catch (err) {
  result.ok = false;
  result.error = String(err && err.stack ? err.stack : err);
  if (page) await shot(page, 'failure').catch(() => undefined);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
