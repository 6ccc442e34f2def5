// Builds the dashboard into dist/ui/ (served by the controller at /ui/):
// esbuild bundles src/dashboard/main.tsx with Preact into one minified
// app.js; index.html, app.css and favicon.svg are copied. The page must load
// nothing from anywhere but the controller, so the build fails if the
// bundle names an external URL (the controller's CSP would block it anyway).
import { build } from 'esbuild';
import { copyFile, mkdir, readFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'src', 'dashboard');
const out = join(root, 'dist', 'ui');
/** The bundle's budget: a dashboard that grows past this has picked up a library it should not have. */
const MAX_BYTES = 64 * 1024;

await mkdir(out, { recursive: true });
await build({
  entryPoints: [join(src, 'main.tsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  outfile: join(out, 'app.js'),
  legalComments: 'none',
  logLevel: 'warning',
});
for (const file of ['index.html', 'app.css', 'favicon.svg']) await copyFile(join(src, file), join(out, file));

const bundle = await readFile(join(out, 'app.js'), 'utf8');
// Namespace URIs (SVG's, XHTML's, MathML's) are names, not places the browser loads from.
const external = (bundle.match(/\b(?:https?:)?\/\/[a-z0-9.-]+\.[a-z]{2,}[^\s"'`)]*/gi) ?? []).filter(
  (url) => !/^https?:\/\/www\.w3\.org\//.test(url),
);
if (external.length > 0) {
  console.error(`build-dashboard: the bundle names external URLs: ${[...new Set(external)].join(', ')}`);
  process.exit(1);
}
const { size } = await stat(join(out, 'app.js'));
if (size > MAX_BYTES) {
  console.error(`build-dashboard: app.js is ${size} bytes, over the ${MAX_BYTES}-byte budget`);
  process.exit(1);
}
