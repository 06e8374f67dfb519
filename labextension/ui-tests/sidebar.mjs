// Browser check of the "Qwen" sidebar in a running JupyterLab (driven by tests/ui/test_sidebar.py).
//
// Environment:
//   LAB_URL          JupyterLab URL with its token, e.g. http://127.0.0.1:8888/user/test/lab?token=...
//   OUT_DIR, CHROMIUM, SHOT_PREFIX  see harness.mjs
//   MODEL_NAME       (optional) served model name of a server that must be listed, then stopped
//   EXPECT_NOTEBOOK  (optional) a notebook path that must show up as holding GPU memory
//   STOP_ALL         (optional) "1": after the Stop button, run "Qwen: Stop all servers"
//
// Prints one JSON line with what it saw; exits non-zero (with the reason) when a step fails.
import { lightAndDarkShots, recordFailedRequests, result, runCheck, shot, step } from './harness.mjs';

const { LAB_URL, MODEL_NAME, EXPECT_NOTEBOOK, STOP_ALL } = process.env;

async function openLab(page) {
  await page.goto(LAB_URL);
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached' });
  // a settled main area makes calmer screenshots; not required
  await page.locator('.jp-Launcher').first().waitFor({ timeout: 10_000 }).catch(() => undefined);
  step('lab loaded');
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
  step('panel opened');
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
  step('gpu section');
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
  step('server listed');
  await lightAndDarkShots(page, page, [[panel, 'panel-light']]);
  step('themes');

  // Clean: forwarded to the server; its report shows in a notification.
  await card.locator('.jp-QwenServer-clean').click();
  const toast = page.locator('.Toastify__toast', { hasText: 'Cleaned' });
  await toast.first().waitFor();
  result.cleanToast = await toast.first().textContent();
  step('cleaned');

  await card.locator('.jp-QwenServer-stop').click();
  await card.waitFor({ state: 'detached', timeout: 30_000 });
  result.serversAfterStop = await panel.locator('.jp-QwenServer').count();
  step('stopped');

  if (STOP_ALL === '1') {
    // the palette command asks first; accept, and every server leaves the list
    const done = page.evaluate(() => window.jupyterapp.commands.execute('jupyter-qwen:stop-all'));
    await page.locator('.jp-Dialog .jp-mod-accept').click();
    await done;
    await panel.locator('.jp-QwenPanel-noServers').waitFor({ timeout: 30_000 });
    result.serversAfterStopAll = await panel.locator('.jp-QwenServer').count();
    step('stopped all');
  }
  result.noServersNote = await panel.locator('.jp-QwenPanel-noServers').count();
  await shot(page, 'after-stop');
}

await runCheck({ prefix: 'sidebar', viewport: { width: 1280, height: 800 } }, async page => {
  recordFailedRequests(page);
  await openLab(page);
  const panel = await openPanel(page);
  await checkGpus(page, panel);
  if (MODEL_NAME) {
    await checkServer(page, panel);
  } else {
    await lightAndDarkShots(page, page);
  }
});
