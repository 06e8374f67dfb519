// What the browser checks in this folder share (sidebar.mjs, panel.mjs, control_panel.mjs):
// Chromium, the result they print, timed steps, screenshots, themes and notebook cells.
//
// Environment: OUT_DIR (where screenshots go), CHROMIUM (the Chromium binary, Debian's
// /usr/bin/chromium), SHOT_PREFIX (optional: prefix of the screenshot file names).
import { chromium } from 'playwright-core';
import path from 'node:path';

const { OUT_DIR, CHROMIUM } = process.env;
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--no-first-run',
  '--disable-sync'
];
const t0 = Date.now();
let shotPrefix = 'shot';

/** What the check saw: printed as one JSON line at the end. */
export const result = { steps: [], screenshots: [], pageErrors: [], consoleErrors: [] };

/** Note a step done, with the seconds since the start (also on stderr, as it happens). */
export function step(name) {
  const line = `${((Date.now() - t0) / 1000).toFixed(1)}s ${name}`;
  result.steps.push(line);
  console.error(line);
}

/** A screenshot of a page or an element, `{SHOT_PREFIX}-{name}.png` in OUT_DIR. */
export async function shot(target, name) {
  const file = path.join(OUT_DIR, `${shotPrefix}-${name}.png`);
  await target.screenshot({ path: file });
  result.screenshots.push(file);
}

export async function setTheme(page, theme) {
  await page.evaluate(t => window.jupyterapp.commands.execute('apputils:change-theme', { theme: t }), theme);
  await page.waitForFunction(t => document.body.dataset.jpThemeName === t, theme);
  await page.waitForTimeout(500); // let the theme's CSS apply before a screenshot
}

/**
 * Screenshots of `target` in the light theme ("light") and the dark one ("dark"), then back
 * to light; `alsoInLight` ([target, name] pairs) are taken in the light theme too.
 */
export async function lightAndDarkShots(page, target, alsoInLight = []) {
  await shot(target, 'light');
  for (const [other, name] of alsoInLight) await shot(other, name);
  await setTheme(page, 'JupyterLab Dark');
  await shot(target, 'dark');
  await setTheme(page, 'JupyterLab Light');
}

/**
 * Text inside `target` (a card) that does not fit: elements with text of their own whose
 * content is wider than their box (scrollWidth > clientWidth + 1), unless they or the `pre`
 * they sit in scroll sideways, or that reach past the card's edges. [class, text] of each.
 */
export async function overflowingText(target) {
  return target.evaluate(cardEl => {
    const found = [];
    const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
    const cardBox = cardEl.getBoundingClientRect();
    for (const el of cardEl.querySelectorAll('*')) {
      const ownText = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
      if (!ownText || el.closest('svg') || el.offsetParent === null) continue;
      const scroller = el.closest('pre');
      const box = (scroller && scrolls(scroller) ? scroller : el).getBoundingClientRect();
      const display = getComputedStyle(el).display;
      const spills = display !== 'inline' && !scrolls(el) && el.scrollWidth > el.clientWidth + 1;
      const outside = box.right > cardBox.right + 1 || box.left < cardBox.left - 1;
      if (spills || outside) found.push([String(el.className), el.textContent.slice(0, 60)]);
    }
    return found;
  });
}

/**
 * Screenshots of `target` in the light and dark themes at each viewport width
 * (`{prefix}{theme}-{width}`), each checked for text that does not fit (`overflowingText`); back to
 * the light theme and the first viewport at the end. {"{prefix}{theme}-{width}": [...], ...}.
 */
export async function themeAndWidthShots(page, target, { prefix = '', widths = [1400, 900] } = {}) {
  const viewport = page.viewportSize();
  const overflow = {};
  for (const width of widths) {
    await page.setViewportSize({ width, height: viewport.height });
    for (const theme of ['light', 'dark']) {
      await setTheme(page, theme === 'light' ? 'JupyterLab Light' : 'JupyterLab Dark');
      await target.scrollIntoViewIfNeeded();
      await shot(target, `${prefix}${theme}-${width}`);
      overflow[`${prefix}${theme}-${width}`] = await overflowingText(target);
    }
  }
  await setTheme(page, 'JupyterLab Light');
  await page.setViewportSize(viewport);
  return overflow;
}

/** Open a notebook in JupyterLab and wait for its kernel to be idle. */
export async function openNotebook(page, url, timeout) {
  await page.goto(url);
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached' });
  await page.locator('.jp-NotebookPanel .jp-Notebook .jp-Cell').first().waitFor();
  await page.waitForFunction(
    () => window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel?.status === 'idle',
    null, { timeout }
  );
  step('notebook open, kernel idle');
}

/** Cell `index` still shows [*]: its code is running. */
export async function cellBusy(page, index) {
  const prompt = await page.locator('.jp-Notebook .jp-Cell').nth(index).locator('.jp-InputPrompt').textContent();
  return prompt.includes('*');
}

export async function waitCellDone(page, index, timeout) {
  await page.waitForFunction(i => !document.querySelectorAll('.jp-Notebook .jp-Cell')[i]
    .querySelector('.jp-InputPrompt').textContent.includes('*'), index, { timeout });
}

/** Read the number in `selector` until it went up `count - 1` times; the readings. */
export async function risingNumbers(page, selector, timeout, count = 4) {
  const read = async () => Number((await page.locator(selector).first().textContent()).replace(/[^\d]/g, '') || 0);
  const numbers = [await read()];
  while (numbers.length < count) {
    await page.waitForFunction(
      ([sel, before]) => Number(document.querySelector(sel).textContent.replace(/[^\d]/g, '') || 0) > before,
      [selector, numbers[numbers.length - 1]], { timeout }
    );
    numbers.push(await read());
  }
  return numbers;
}

/** Keep the replies of the jupyter_qwen server extension that failed (status >= 400). */
export function recordFailedRequests(page) {
  result.failedRequests = [];
  page.on('response', r => {
    if (r.url().includes('/jupyter-qwen/') && r.status() >= 400) {
      result.failedRequests.push(`${r.status()} ${r.url()}`);
    }
  });
}

/** Add `text` to `list` once, shortened; at most 20 entries. */
function keep(list, text) {
  const short = String(text).slice(0, 800);
  if (list.length < 20 && !list.includes(short)) list.push(short);
}

/**
 * Run `check(page)` in a fresh headless Chromium; print the result as one JSON line and exit
 * non-zero (with the reason in `result.error`, and a "failure" screenshot) when it throws.
 */
export async function runCheck({ prefix, viewport, timeout = 60_000 }, check) {
  shotPrefix = process.env.SHOT_PREFIX || prefix;
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  let page;
  try {
    const context = await browser.newContext({ viewport });
    page = await context.newPage();
    page.setDefaultTimeout(timeout);
    page.on('pageerror', err => keep(result.pageErrors, err.stack || String(err)));
    page.on('console', msg => {
      if (msg.type() === 'error') keep(result.consoleErrors, msg.text());
    });
    await check(page);
    result.ok = true;
  } catch (err) {
    result.ok = false;
    result.error = String(err && err.stack ? err.stack : err);
    if (page) await shot(page, 'failure').catch(() => undefined);
  } finally {
    await browser.close();
  }
  // exitCode, not exit(): a long line on a pipe must be written out before node ends
  console.log(JSON.stringify(result));
  process.exitCode = result.ok ? 0 : 1;
}
