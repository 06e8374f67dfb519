// Browser check of the notebook's ServerPanel widget (driven by tests/ui/test_panel.py).
//
// Environment:
//   NOTEBOOK_URL  the notebook in JupyterLab, with the token; its first cell shows the panel,
//                 its second sends requests for a while (keeping the kernel busy)
//   OUT_DIR, CHROMIUM, SHOT_PREFIX  see harness.mjs
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import {
  cellBusy,
  openNotebook,
  recordFailedRequests,
  result,
  risingNumbers,
  runCheck,
  shot,
  step,
  themeAndWidthShots,
  waitCellDone
} from './harness.mjs';

const { NOTEBOOK_URL } = process.env;
const TIMEOUT = 120_000;
result.adminRequests = [];

/** The second cell still shows [*]: its code is running. */
const requestCellBusy = page => cellBusy(page, 1);

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
  result.totals = await risingNumbers(
    page, '.jqw-root[data-kind="server"] .jqw-stat-total .jqw-stat-value', TIMEOUT
  );
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
  await panel.locator('.jqw-actions .jqw-result[data-done="clean"]').waitFor({ timeout: TIMEOUT });
  result.cleanText = await panel.locator('.jqw-actions .jqw-result').textContent();
  result.cleanRoute = await panel.locator('.jqw-actions .jqw-result').getAttribute('data-route');
  result.busyAfterClean = await requestCellBusy(page);
  step('cleaned while the request cell runs');
}

async function screenshots(page, panel) {
  await panel.scrollIntoViewIfNeeded();
  result.overflow = await themeAndWidthShots(page, panel);
  await shot(page, 'page-light');
  step('screenshots');
}

async function stop(page, panel) {
  result.busyBeforeStop = await requestCellBusy(page);
  await panel.locator('.jqw-stop').click();
  await page.waitForSelector('.jqw-root[data-kind="server"][data-state="stopped"]', { timeout: TIMEOUT });
  await panel.locator('.jqw-actions .jqw-result[data-done="stop"]').waitFor({ timeout: TIMEOUT }).catch(() => undefined);
  step('stopped');
  await page.waitForTimeout(2500);
  result.stopText = await panel.locator('.jqw-actions .jqw-result').textContent();
  result.stateAfterStop = await panel.locator('.jqw-state').textContent();
  result.stopDisabled = await panel.locator('.jqw-stop').isDisabled();
  result.stopRoute = await panel.locator('.jqw-actions .jqw-result').getAttribute('data-route');
  const before = await panel.getAttribute('data-updated-at');
  await page.waitForTimeout(2500);
  result.updatesAfterStop = before !== (await panel.getAttribute('data-updated-at'));
  await waitCellDone(page, 1, TIMEOUT);
  result.requestCellOutput = await page.locator('.jp-Notebook .jp-Cell').nth(1)
    .locator('.jp-OutputArea-output').allTextContents();
  await shot(panel, 'stopped');
  step('request cell ended');
}

/** With the server gone the route answers 404: Clean falls back to a message to the (idle) kernel. */
async function cleanThroughKernel(page, panel) {
  await panel.locator('.jqw-clean').click();
  await page.waitForFunction(() => {
    const el = document.querySelector('.jqw-root[data-kind="server"] .jqw-actions .jqw-result');
    return el.dataset.done === 'clean' && el.dataset.action === 'clean' && el.textContent.startsWith('cleaned');
  }, null, { timeout: TIMEOUT });
  result.fallbackCleanText = await panel.locator('.jqw-actions .jqw-result').textContent();
  result.fallbackCleanRoute = await panel.locator('.jqw-actions .jqw-result').getAttribute('data-route');
  step('cleaned through the kernel');
}

await runCheck({ prefix: 'panel', viewport: { width: 1280, height: 900 } }, async page => {
  recordFailedRequests(page);
  page.on('response', r => {
    const url = r.url();
    if (url.includes('/jupyter-qwen/servers/')) result.adminRequests.push(`${r.status()} ${new URL(url).pathname}`);
  });
  await openNotebook(page, NOTEBOOK_URL, TIMEOUT);
  const panel = await runCells(page);
  await watchNumbers(page, panel);
  await clean(page, panel);
  await screenshots(page, panel);
  await stop(page, panel);
  // the fallback below asks a route that answers 404 on purpose: Chromium logs that one
  result.consoleErrorsBeforeFallback = [...result.consoleErrors];
  await cleanThroughKernel(page, panel);
});
