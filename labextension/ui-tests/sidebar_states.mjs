// Browser check of the "Qwen" sidebar with servers in every state (driven by
// tests/ui/test_sidebar_states.py): each card, the GPU section, the status-bar item,
// screenshots in light and dark at two widths with no text overflowing its card, and the
// Abort button of a running request.
//
// Environment:
//   LAB_URL          JupyterLab URL with its token
//   OUT_DIR, CHROMIUM, SHOT_PREFIX  see harness.mjs
//   CARDS            JSON {"<status>": "<served model name>", ...}: the cards that must show
//   ABORT_MODEL      served model name of the server whose request ABORT_REQUEST is aborted
//   ABORT_REQUEST    the request id to abort from its row
//   NOTEBOOK         (optional) the notebook path a card shows; clicking it must open it
//   BROKEN           (optional) served model name of a server whose card cannot be drawn
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import { recordFailedRequests, result, runCheck, setTheme, shot, step } from './harness.mjs';
import { card, openPanel } from './sidebar_parts.mjs';

const { LAB_URL, CARDS, ABORT_MODEL, ABORT_REQUEST, NOTEBOOK, BROKEN } = process.env;
const cards = JSON.parse(CARDS);
const SIDEBAR_PX = 300;

/** Drag the splitter right of the left area so the panel is `px` wide. */
async function setSidebarWidth(page, panel, px) {
  const box = await panel.boundingBox();
  const handle = page.locator('#jp-main-split-panel > .lm-SplitPanel-handle').first();
  const h = await handle.boundingBox();
  await page.mouse.move(h.x + h.width / 2, h.y + h.height / 2);
  await page.mouse.down();
  await page.mouse.move(box.x + px + h.width / 2, h.y + h.height / 2, { steps: 5 });
  await page.mouse.up();
  await page.waitForTimeout(300);
  return Math.round((await panel.boundingBox()).width);
}

/** Text in a card that reaches past its element or its card: [card, class, text] of each. */
async function overflowingText(panel) {
  return panel.evaluate(root => {
    const found = [];
    const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
    for (const cardEl of root.querySelectorAll('.jp-QwenCard')) {
      const cardBox = cardEl.getBoundingClientRect();
      for (const el of cardEl.querySelectorAll('*')) {
        const ownText = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
        if (!ownText || el.closest('svg') || el.offsetParent === null) continue;
        const scroller = el.closest('pre, .jp-QwenScroll');
        const box = (scroller && scrolls(scroller) ? scroller : el).getBoundingClientRect();
        const display = getComputedStyle(el).display;
        const spills = display !== 'inline' && !scrolls(el) && el.scrollWidth > el.clientWidth + 1;
        const outside = box.right > cardBox.right + 1 || box.left < cardBox.left - 1;
        if (spills || outside) {
          found.push([cardEl.dataset.serverId ?? cardEl.dataset.gpuIndex, el.className, el.textContent.slice(0, 60)]);
        }
      }
    }
    return found;
  });
}

async function readCards(page, panel) {
  for (const name of Object.values(cards)) await card(page, panel, name).waitFor();
  if (BROKEN) await panel.locator('.jp-QwenCard-broken', { hasText: BROKEN }).waitFor();
  const text = async (name, sel) =>
    (await card(page, panel, name).locator(sel).allTextContents()).join(' | ');
  result.statuses = {};
  for (const [status, name] of Object.entries(cards)) {
    result.statuses[name] = await card(page, panel, name).getAttribute('data-status');
  }
  if (cards.loading) {
    const bar = card(page, panel, cards.loading).locator('[role=progressbar]');
    result.loading = { text: await text(cards.loading, '.jp-QwenServer-loading'), value: await bar.getAttribute('aria-valuenow') };
  }
  if (cards.failed) {
    const failed = card(page, panel, cards.failed);
    result.failed = {
      error: await text(cards.failed, '.jp-QwenServer-error'),
      hint: await text(cards.failed, '.jp-QwenServer-hint'),
      detailOpen: await failed.locator('details').evaluate(d => d.open),
      actions: await failed.locator('.jp-QwenCard-actions button').allTextContents()
    };
    await failed.locator('details summary').click();
    result.failed.detail = await text(cards.failed, 'details pre');
  }
  result.cards = {};
  for (const name of Object.values(cards)) {
    const c = card(page, panel, name);
    result.cards[name] = {
      facts: await text(name, '.jp-QwenServer-facts'),
      stats: await text(name, '.jp-QwenServer-stats'),
      memory: await text(name, '.jp-QwenServer-memory'),
      latency: await text(name, '.jp-QwenServer-latency'),
      running: await c.locator('.jp-QwenRunning tr').count(),
      abortButtons: await c.locator('.jp-QwenRunning-abort').count(),
      badges: await text(name, '.jp-QwenBadge'),
      actions: await c.locator('.jp-QwenCard-actions button').allTextContents(),
      snippet: await text(name, '.jp-QwenServer-snippet'),
      url: await text(name, '.jp-QwenServer-url')
    };
  }
  step('cards read');
}

async function checkConnectRoutes(page, panel) {
  // the direct snippet, then the one through Jupyter where the server extension offers it
  const routes = panel.locator('.jp-QwenConnect-route[data-route=proxy]');
  result.proxyRoutes = await routes.count();
  if (result.proxyRoutes) {
    const c = panel.locator('.jp-QwenServer', { has: page.locator('.jp-QwenConnect-route[data-route=proxy]') }).first();
    await c.locator('.jp-QwenConnect-route[data-route=proxy]').click();
    result.proxySnippet = await c.locator('.jp-QwenServer-snippet').textContent();
    await c.locator('.jp-QwenConnect-route[data-route=direct]').click();
  }
}

async function screenshots(page, panel) {
  result.overflow = {};
  result.panelWidths = {};
  for (const width of [1400, 900]) {
    await page.setViewportSize({ width, height: 1000 });
    result.panelWidths[width] = await setSidebarWidth(page, panel, SIDEBAR_PX);
    for (const theme of ['light', 'dark']) {
      await setTheme(page, theme === 'light' ? 'JupyterLab Light' : 'JupyterLab Dark');
      await shot(page, `${theme}-${width}`);
      await shot(panel, `panel-${theme}-${width}`);
      result.overflow[`${theme}-${width}`] = await overflowingText(panel);
    }
  }
  await setTheme(page, 'JupyterLab Light');
  step('screenshots');
}

async function checkAbort(page, panel) {
  const row = card(page, panel, ABORT_MODEL).locator(`tr[data-request-id="${ABORT_REQUEST}"]`);
  await row.locator('.jp-QwenRunning-abort').click();
  const toast = page.locator('.Toastify__toast', { hasText: 'Aborted' });
  await toast.first().waitFor();
  result.abortToast = await toast.first().textContent();
  await row.waitFor({ state: 'detached', timeout: 30_000 });
  result.rowsAfterAbort = await card(page, panel, ABORT_MODEL).locator('.jp-QwenRunning tr').count();
  step('aborted');
}

await runCheck({ prefix: 'states', viewport: { width: 1400, height: 1000 } }, async page => {
  recordFailedRequests(page);
  const panel = await openPanel(page, LAB_URL);
  await panel.locator('.jp-QwenGpu, .jp-QwenPanel-gpuReason').first().waitFor();
  result.gpuSection = await panel.locator('.jp-QwenPanel-gpus').count();
  result.gpuCards = await panel.locator('.jp-QwenGpu').count();
  if (result.gpuCards) {
    // wait for the kernel's process to be listed
    await panel.locator('.jp-QwenGpu-procs li[data-kind=process]').first().waitFor();
    await panel.locator('.jp-QwenGpu-procs li[data-kind=server]').first().waitFor();
    const rows = async kinds =>
      panel.locator('.jp-QwenGpu-procs li').evaluateAll(
        (lis, ks) => lis.filter(li => ks.includes(li.dataset.kind)).map(li => li.textContent),
        kinds
      );
    result.gpuOwners = await rows(['process', 'server']);
    result.gpuRest = await rows(['other', 'free']);
  }
  await readCards(page, panel);
  const status = page.locator('.jp-QwenStatusItem-button');
  result.statusBar = await status.textContent();
  await checkConnectRoutes(page, panel);
  await screenshots(page, panel);
  // the broken card's message, less the error's own (minified) words
  result.brokenCards = (await panel.locator('.jp-QwenCard-broken').allTextContents()).map(t =>
    t.replace(/: .*$/, ': ')
  );
  if (NOTEBOOK) {
    await panel.locator('.jp-QwenServer-notebook .jp-QwenNotebookLink', { hasText: NOTEBOOK }).first().click();
    await page.waitForFunction(p => window.jupyterapp.shell.currentWidget?.context?.path === p, NOTEBOOK);
    result.openedNotebook = NOTEBOOK;
    step('notebook opened');
  }
  // the status-bar item opens the panel: collapse the left area, then click it
  await page.evaluate(() => window.jupyterapp.shell.collapseLeft());
  await status.click();
  await panel.waitFor({ state: 'visible' });
  result.statusBarOpens = true;
  if (ABORT_MODEL) await checkAbort(page, panel);
});
