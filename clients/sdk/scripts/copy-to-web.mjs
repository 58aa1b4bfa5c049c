// Copies the built SDK (dist/) to clients/web/vendor/sdk/, where the browser app imports it from:
// chat-edge serves only clients/web, and needs no Node at run time.
import { cpSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "..", "dist");
const target = join(here, "..", "..", "web", "vendor", "sdk");

if (!existsSync(join(dist, "index.js"))) {
  console.error("copy-to-web: dist/index.js is missing; run tsc first");
  process.exit(1);
}
rmSync(target, { recursive: true, force: true });
mkdirSync(target, { recursive: true });
cpSync(dist, target, { recursive: true, filter: (src) => !src.endsWith(".tsbuildinfo") });
console.log(`copy-to-web: ${dist} -> ${target}`);
