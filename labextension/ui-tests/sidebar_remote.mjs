// Browser check of a server attached with connect() (driven by tests/ui/test_sidebar_remote.py):
// its card in the "Qwen" sidebar says "remote", offers no Stop / Clean, and shows the live
// figures the server extension read from the server's /metrics.
//
// Environment:
//   LAB_URL     JupyterLab URL with its token
//   REMOTE_ID   the registry id of the attached server's record
//   OUT_DIR, CHROMIUM, SHOT_PREFIX  see harness.mjs
import { result, runCheck, shot, step } from './harness.mjs';
import { openPanel } from './sidebar_parts.mjs';

const { LAB_URL, REMOTE_ID } = process.env;

await runCheck({ prefix: 'remote', viewport: { width: 1400, height: 1000 } }, async page => {
  const panel = await openPanel(page, LAB_URL);
  const remote = panel.locator(`.jp-QwenServer[data-server-id="${REMOTE_ID}"]`);
  await remote.waitFor({ timeout: 60_000 });
  // the figures come from two /metrics readings (rates need both): wait for a rate
  await remote.locator('.jp-QwenServer-stats', { hasText: /\d+ tok\/s/ })
    .waitFor({ timeout: 60_000 });
  step('remote card with figures');
  result.badges = await remote.locator('.jp-QwenCard-badges').innerText();
  result.buttons = await remote.locator('button').allInnerTexts();
  result.stats = await remote.locator('.jp-QwenServer-stats').innerText();
  result.model = await remote.locator('.jp-QwenServer-model').innerText();
  await shot(page, 'sidebar-remote');
});
