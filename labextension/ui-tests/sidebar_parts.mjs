// Parts of the "Qwen" sidebar the sidebar checks share (sidebar_states.mjs, sidebar_abort.mjs).
import { step } from './harness.mjs';

/** The card of the server whose served model name is `name`. */
export function card(page, panel, name) {
  return panel.locator('.jp-QwenServer', {
    has: page.locator('.jp-QwenServer-model', { hasText: name })
  });
}

/** Open JupyterLab at `labUrl` and the "Qwen" sidebar; its panel. */
export async function openPanel(page, labUrl) {
  await page.goto(labUrl);
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached' });
  await page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="jupyter-qwen-panel"]').click();
  const panel = page.locator('#jupyter-qwen-panel');
  await panel.waitFor({ state: 'visible' });
  step('panel opened');
  return panel;
}
