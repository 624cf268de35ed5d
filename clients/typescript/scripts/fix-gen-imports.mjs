// Runs after `tsc` (npm's postbuild): adds the ".js" extension to the
// extensionless relative imports of the generated code in dist/src/gen, which
// Node's ESM loader cannot resolve otherwise. protoc-gen-es writes them so
// unless its `import_extension=js` option is set; with it, this finds nothing
// to change. The generated sources in src/gen are never touched.
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("../dist/src/gen", import.meta.url));
const specifier = /(\bfrom\s+|\bimport\s*\(\s*|\bimport\s+)(["'])(\.{1,2}\/[^"']*?)\2/g;

async function* files(dir) {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) yield* files(path);
    else if (/\.(js|d\.ts)$/.test(entry.name)) yield path;
  }
}

let changed = 0;
try {
  for await (const path of files(root)) {
    const text = await readFile(path, "utf8");
    const fixed = text.replace(specifier, (whole, head, quote, target) =>
      /\.(m?js|json)$/.test(target) ? whole : `${head}${quote}${target}.js${quote}`,
    );
    if (fixed !== text) {
      await writeFile(path, fixed);
      changed += 1;
    }
  }
} catch (error) {
  if (error.code !== "ENOENT") throw error;
}
if (changed > 0) console.error(`fix-gen-imports: added .js extensions in ${changed} generated files`);
