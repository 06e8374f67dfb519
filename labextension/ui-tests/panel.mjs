// Browser check of the notebook's ServerPanel widget (driven by tests/ui/test_panel.py).
//
// Environment:
//   NOTEBOOK_URL  the notebook in JupyterLab, with the token; its first cell shows the panel,
//                 its second sends requests for a while (keeping the kernel busy)
//   OUT_DIR       where screenshots go
//   CHROMIUM      the Chromium binary (Debian's /usr/bin/chromium)
//   SHOT_PREFIX   (optional) prefix of the screenshot file names
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import { chromium } from 'playwright-core';
import path from 'node:path';

const { NOTEBOOK_URL, OUT_DIR, CHROMIUM } = process.env;
const PREFIX = process.env.SHOT_PREFIX || 'panel';
const TIMEOUT = 120_000;
const result = { steps: [], screenshots: [], pageErrors: [], failedRequests: [], adminRequests: [] };
const t0 = Date.now();

function step(name) {
  const line = `${((Date.now() - t0) / 1000).toFixed(1)}s ${name}`;
  result.steps.push(line);
  console.error(line);
}

async function shot(target, name) {
  const file = path.join(OUT_DIR, `${PREFIX}-${name}.png`);
  await target.screenshot({ path: file });
  result.screenshots.push(file);
}

async function setTheme(page, theme) {
  await page.evaluate(t => window.jupyterapp.commands.execute('apputils:change-theme', { theme: t }), theme);
  await page.waitForFunction(t => document.body.dataset.jpThemeName === t, theme);
  await page.waitForTimeout(500);
}

/** The second cell still shows [*]: its code is running. */
async function requestCellBusy(page) {
  const prompt = await page.locator('.jp-Notebook .jp-Cell').nth(1).locator('.jp-InputPrompt').textContent();
  return prompt.includes('*');
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

async function runCells(page) {
  // not awaited: the command resolves only once every cell has run
  await page.evaluate(() => {
    window.jupyterapp.commands.execute('notebook:run-all-cells');
  });
  const panel = page.locator('.jqw-root[data-kind="server"]');
  await panel.waitFor();
  result.firstState = await panel.getAttribute('data-state');
  if (result.firstState === 'loading') {
    result.loadingText = await panel.locator('.jqw-phase').textContent();
    await shot(panel, 'loading');
  }
  step(`panel rendered (${result.firstState})`);
  result.kernelPython = (await page.locator('.jp-OutputArea-output', { hasText: 'kernel python:' })
    .first().textContent()).replace('kernel python:', '').trim();
  await page.waitForSelector('.jqw-root[data-state="ok"]', { timeout: TIMEOUT });
  step('server ok');
  return panel;
}

/** The tokens total must go up while the request cell runs. */
async function watchNumbers(page, panel) {
  const total = panel.locator('.jqw-stat-total .jqw-stat-value');
  const read = async () => Number((await total.textContent()).replace(/[^\d]/g, '') || 0);
  const totals = [await read()];
  while (totals.length < 4) {
    const last = totals[totals.length - 1];
    await page.waitForFunction(
      ([sel, before]) => Number(document.querySelector(sel).textContent.replace(/[^\d]/g, '') || 0) > before,
      ['.jqw-root[data-kind="server"] .jqw-stat-total .jqw-stat-value', last],
      { timeout: TIMEOUT }
    );
    totals.push(await read());
  }
  result.totals = totals;
  result.tokensPerS = await panel.locator('.jqw-stat-gen .jqw-stat-value').textContent();
  result.kvUsage = await panel.locator('.jqw-stat-kv .jqw-stat-value').textContent();
  result.chartPoints = await panel.evaluate(el =>
    [...el.querySelectorAll('.jqw-line')].map(p => (p.getAttribute('d').match(/L/g) || []).length)
  );
  result.chartTitles = await panel.locator('.jqw-chart-title').allTextContents();
  step('numbers move');
}

async function clean(page, panel) {
  result.busyBeforeClean = await requestCellBusy(page);
  await panel.locator('.jqw-clean').click();
  await panel.locator('.jqw-result[data-done="clean"]').waitFor({ timeout: TIMEOUT });
  result.cleanText = await panel.locator('.jqw-result').textContent();
  result.cleanRoute = await panel.locator('.jqw-result').getAttribute('data-route');
  result.busyAfterClean = await requestCellBusy(page);
  step('cleaned while the request cell runs');
}

async function screenshots(page, panel) {
  await panel.scrollIntoViewIfNeeded();
  await shot(panel, 'light');
  await shot(page, 'page-light');
  await setTheme(page, 'JupyterLab Dark');
  await shot(panel, 'dark');
  await setTheme(page, 'JupyterLab Light');
  step('screenshots');
}

async function stop(page, panel) {
  result.busyBeforeStop = await requestCellBusy(page);
  await panel.locator('.jqw-stop').click();
  await page.waitForSelector('.jqw-root[data-kind="server"][data-state="stopped"]', { timeout: TIMEOUT });
  await panel.locator('.jqw-result[data-done="stop"]').waitFor({ timeout: TIMEOUT }).catch(() => undefined);
  step('stopped');
  await page.waitForTimeout(2500);
  result.stopText = await panel.locator('.jqw-result').textContent();
  result.stateAfterStop = await panel.locator('.jqw-state').textContent();
  result.stopDisabled = await panel.locator('.jqw-stop').isDisabled();
  result.stopRoute = await panel.locator('.jqw-result').getAttribute('data-route');
  const before = await panel.getAttribute('data-updated-at');
  await page.waitForTimeout(2500);
  result.updatesAfterStop = before !== (await panel.getAttribute('data-updated-at'));
  await page.waitForFunction(() => !document.querySelectorAll('.jp-Notebook .jp-Cell')[1]
    .querySelector('.jp-InputPrompt').textContent.includes('*'), null, { timeout: TIMEOUT });
  result.requestCellOutput = await page.locator('.jp-Notebook .jp-Cell').nth(1)
    .locator('.jp-OutputArea-output').allTextContents();
  await shot(panel, 'stopped');
  step('request cell ended');
}

/** With the server gone the route answers 404: Clean falls back to a message to the (idle) kernel. */
async function cleanThroughKernel(page, panel) {
  await panel.locator('.jqw-clean').click();
  await page.waitForFunction(() => {
    const el = document.querySelector('.jqw-root[data-kind="server"] .jqw-result');
    return el.dataset.done === 'clean' && el.dataset.action === 'clean' && el.textContent.startsWith('cleaned');
  }, null, { timeout: TIMEOUT });
  result.fallbackCleanText = await panel.locator('.jqw-result').textContent();
  result.fallbackCleanRoute = await panel.locator('.jqw-result').getAttribute('data-route');
  step('cleaned through the kernel');
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
    '--disable-component-update', '--no-first-run', '--disable-sync']
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(60_000);
  page.on('pageerror', err => result.pageErrors.push(String(err)));
  page.on('response', r => {
    const url = r.url();
    if (url.includes('/jupyter-qwen/servers/')) result.adminRequests.push(`${r.status()} ${new URL(url).pathname}`);
    if (url.includes('/jupyter-qwen/') && r.status() >= 400) result.failedRequests.push(`${r.status()} ${url}`);
  });
  await openNotebook(page);
  const panel = await runCells(page);
  await watchNumbers(page, panel);
  await clean(page, panel);
  await screenshots(page, panel);
  await stop(page, panel);
  await cleanThroughKernel(page, panel);
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
