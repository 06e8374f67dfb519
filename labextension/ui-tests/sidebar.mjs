// Browser check of the "Qwen" sidebar in a running JupyterLab (driven by tests/ui/test_sidebar.py).
//
// Environment:
//   LAB_URL          JupyterLab URL with its token, e.g. http://127.0.0.1:8888/user/test/lab?token=...
//   OUT_DIR          where screenshots go
//   CHROMIUM         the Chromium binary (Debian's /usr/bin/chromium)
//   MODEL_NAME       (optional) served model name of a server that must be listed, then stopped
//   EXPECT_NOTEBOOK  (optional) a notebook path that must show up as holding GPU memory
//   SHOT_PREFIX      (optional) prefix of the screenshot file names
//   STOP_ALL         (optional) "1": after the Stop button, run "Qwen: Stop all servers"
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import { chromium } from 'playwright-core';
import path from 'node:path';

const { LAB_URL, OUT_DIR, CHROMIUM, MODEL_NAME, EXPECT_NOTEBOOK, STOP_ALL } = process.env;
const PREFIX = process.env.SHOT_PREFIX || 'sidebar';
const TIMEOUT = 60_000;
const result = { steps: [], screenshots: [], pageErrors: [], failedRequests: [] };

async function shot(page, name, element) {
  const file = path.join(OUT_DIR, `${PREFIX}-${name}.png`);
  await (element ?? page).screenshot({ path: file });
  result.screenshots.push(file);
}

async function setTheme(page, theme) {
  await page.evaluate(t => window.jupyterapp.commands.execute('apputils:change-theme', { theme: t }), theme);
  await page.waitForFunction(t => document.body.dataset.jpThemeName === t, theme);
  await page.waitForTimeout(500); // let the theme's CSS apply before a screenshot
}

async function openLab(page) {
  await page.goto(LAB_URL);
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached' });
  // a settled main area makes calmer screenshots; not required
  await page.locator('.jp-Launcher').first().waitFor({ timeout: 10_000 }).catch(() => undefined);
  result.steps.push('lab loaded');
}

/** Open the panel from its tab in the left sidebar, like a user does. */
async function openPanel(page) {
  const tab = page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="jupyter-qwen-panel"]');
  await tab.waitFor();
  result.tabHasIcon = (await tab.locator('svg').count()) > 0;
  await tab.click();
  const panel = page.locator('#jupyter-qwen-panel');
  await panel.waitFor({ state: 'visible' });
  result.commands = await page.evaluate(() =>
    ['jupyter-qwen:open-panel', 'jupyter-qwen:stop-all'].map(id => [
      id,
      window.jupyterapp.commands.hasCommand(id) ? window.jupyterapp.commands.label(id) : null
    ])
  );
  result.steps.push('panel opened');
  return panel;
}

/** GPUs: cards on a GPU machine, the reason on a CPU one. */
async function checkGpus(page, panel) {
  await panel.locator('.jp-QwenGpu, .jp-QwenPanel-gpuReason').first().waitFor();
  result.gpuCards = await panel.locator('.jp-QwenGpu').count();
  result.gpuReason = (await panel.locator('.jp-QwenPanel-gpuReason').allTextContents()).join(' ');
  if (EXPECT_NOTEBOOK) {
    const owner = panel.locator('.jp-QwenGpu-owner', { hasText: EXPECT_NOTEBOOK });
    await owner.first().waitFor();
    result.gpuOwners = await panel.locator('.jp-QwenGpu-owner').allTextContents();
    // wait for a few samples so the sparkline draws a line
    await page.waitForFunction(() => {
      const d = document.querySelector('.jp-QwenSparkline-mem')?.getAttribute('d') ?? '';
      return (d.match(/L/g) ?? []).length >= 10;
    });
    result.gpuTitle = await panel.locator('.jp-QwenGpu .jp-QwenCard-title').first().textContent();
    result.gpuMemoryLine = await panel.locator('.jp-QwenGpu .jp-QwenCard-line').first().textContent();
  }
  result.steps.push('gpu section');
}

/** The model server, with its model name, URL and snippet; screenshots; Stop. */
async function checkServer(page, panel) {
  const card = panel.locator('.jp-QwenServer', {
    has: page.locator('.jp-QwenServer-model', { hasText: MODEL_NAME })
  });
  await card.waitFor();
  result.serverId = await card.getAttribute('data-server-id');
  result.serverUrl = await card.locator('.jp-QwenServer-url').textContent();
  result.snippet = await card.locator('.jp-QwenServer-snippet').textContent();
  result.stats = await card.locator('.jp-QwenServer-stats').textContent();
  result.status = await card.locator('.jp-QwenStatus').textContent();
  result.serverNotebook = await card.locator('.jp-QwenServer-notebook').textContent();
  result.steps.push('server listed');
  await shot(page, 'light');
  await shot(page, 'panel-light', panel);
  await setTheme(page, 'JupyterLab Dark');
  await shot(page, 'dark');
  await setTheme(page, 'JupyterLab Light');
  result.steps.push('themes');

  // Clean: forwarded to the server; its report shows in a notification.
  await card.locator('.jp-QwenServer-clean').click();
  const toast = page.locator('.Toastify__toast', { hasText: 'Cleaned' });
  await toast.first().waitFor();
  result.cleanToast = await toast.first().textContent();
  result.steps.push('cleaned');

  await card.locator('.jp-QwenServer-stop').click();
  await card.waitFor({ state: 'detached', timeout: 30_000 });
  result.serversAfterStop = await panel.locator('.jp-QwenServer').count();
  result.steps.push('stopped');

  if (STOP_ALL === '1') {
    // the palette command asks first; accept, and every server leaves the list
    const done = page.evaluate(() => window.jupyterapp.commands.execute('jupyter-qwen:stop-all'));
    await page.locator('.jp-Dialog .jp-mod-accept').click();
    await done;
    await panel.locator('.jp-QwenPanel-noServers').waitFor({ timeout: 30_000 });
    result.serversAfterStopAll = await panel.locator('.jp-QwenServer').count();
    result.steps.push('stopped all');
  }
  result.noServersNote = await panel.locator('.jp-QwenPanel-noServers').count();
  await shot(page, 'after-stop');
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-background-networking',
    '--disable-component-update',
    '--no-first-run',
    '--disable-sync'
  ]
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', err => result.pageErrors.push(String(err)));
  page.on('response', r => {
    if (r.url().includes('/jupyter-qwen/') && r.status() >= 400) {
      result.failedRequests.push(`${r.status()} ${r.url()}`);
    }
  });

  await openLab(page);
  const panel = await openPanel(page);
  await checkGpus(page, panel);
  if (MODEL_NAME) {
    await checkServer(page, panel);
  } else {
    await shot(page, 'light');
    await setTheme(page, 'JupyterLab Dark');
    await shot(page, 'dark');
  }
  result.ok = true;
} catch (err) {
  result.ok = false;
  result.error = String(err && err.stack ? err.stack : err);
  if (page) {
    await shot(page, 'failure').catch(() => undefined);
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
