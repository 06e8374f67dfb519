// Checks one JavaScript or TypeScript formatter module against tests/format_cases.json.
//
//   node tests/format_check.mjs CASES MODULE
//
// MODULE is an ES module (the widget's panel.js) or a TypeScript file (the sidebar's format.ts,
// transpiled with labextension/node_modules/typescript). Prints one JSON line:
// {"checked": [kinds whose function the module exports], "failures": [...]}.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const FUNCTIONS = {
  number: 'formatNumber',
  percent: 'formatPercent',
  bytes: 'formatBytes',
  duration: 'formatDuration',
  latency: 'formatLatency',
  snippet: 'chatSnippet'
};

function javascript(file) {
  const source = readFileSync(file, 'utf8');
  if (!file.endsWith('.ts')) return source;
  const labextension = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../labextension');
  const ts = createRequire(path.join(labextension, 'package.json'))('typescript');
  const options = { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 };
  return ts.transpileModule(source, { compilerOptions: options }).outputText;
}

const [casesFile, moduleFile] = process.argv.slice(2);
const cases = JSON.parse(readFileSync(casesFile, 'utf8'));
const code = Buffer.from(javascript(moduleFile)).toString('base64');
const module = await import(`data:text/javascript;base64,${code}`);
const result = { checked: [], failures: [] };
for (const [kind, name] of Object.entries(FUNCTIONS)) {
  if (typeof module[name] !== 'function') continue;
  result.checked.push(kind);
  for (const { args, expected } of cases[kind]) {
    const got = module[name](...args);
    if (got !== expected) result.failures.push({ kind, args, expected, got });
  }
}
console.log(JSON.stringify(result));
