// Validates AsyncAPI documents with the reference parser (@asyncapi/parser: the AsyncAPI 3 JSON
// Schema plus its Spectral rules, $refs resolved). Prints every diagnostic; exits 1 if a document
// has an error (or, without --allow-warnings, a warning), 2 on a wrong command line.
// Usage: node validate.mjs [--allow-warnings] FILE...
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const args = process.argv.slice(2);
const allowWarnings = args.includes('--allow-warnings');
const files = args.filter((a) => a !== '--allow-warnings');
if (files.length === 0) {
  console.error('usage: node validate.mjs [--allow-warnings] FILE...');
  process.exit(2);
}

const parser = new Parser();
const names = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([k, v]) => [v, k.toLowerCase()]));
let bad = 0;
for (const file of files) {
  const path = resolve(file);
  let text;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    console.error(`${file}: unreadable: ${e.message}`);
    bad++;
    continue;
  }
  const { document, diagnostics } = await parser.parse(text, { source: pathToFileURL(path).href });
  let errors = 0;
  let warnings = 0;
  for (const d of diagnostics) {
    if (d.severity === DiagnosticSeverity.Error) errors++;
    else if (d.severity === DiagnosticSeverity.Warning) warnings++;
    else continue;
    const at = d.path && d.path.length ? d.path.join('.') : '(document)';
    const line = d.range ? `:${d.range.start.line + 1}` : '';
    console.error(`${file}${line}: ${names[d.severity]} ${d.code}: ${d.message} at ${at}`);
  }
  const failed = errors > 0 || document === undefined || (!allowWarnings && warnings > 0);
  if (failed) bad++;
  const version = document ? document.version() : '?';
  console.log(`${file}: AsyncAPI ${version}, ${errors} error(s), ${warnings} warning(s)${failed ? ': INVALID' : ': valid'}`);
}
process.exit(bad > 0 ? 1 : 0);
