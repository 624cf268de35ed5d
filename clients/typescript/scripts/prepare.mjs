// Builds dist/ when npm runs `prepare`: on `npm install` in this folder, on
// `npm install /path/to/clients/typescript` or a git URL from another project,
// and before `npm pack`/`npm publish`. A folder install links this folder
// without installing its dependencies, so they are installed here first
// (from package-lock.json) when the compiler is missing.

import { spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const tsc = join(root, "node_modules", "typescript", "bin", "tsc");

function run(command, args, what) {
  const result = spawnSync(command, args, { cwd: root, stdio: ["ignore", "inherit", "inherit"], env: childEnv() });
  if (result.status !== 0) {
    const why = result.error ? result.error.message : `exit code ${result.status}`;
    console.error(`@conveyor/client: ${what} failed (${why}); run \`npm ci && npm run build\` in ${root} to see why`);
    process.exit(1);
  }
}

// The parent npm's settings for its own project (prefix, global, the package
// being installed) must not leak into the install of this folder.
function childEnv() {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^npm_(package_|lifecycle_|config_(local_prefix|prefix|global|save|only|omit|production|install_links|workspace))/i.test(key)) continue;
    env[key] = value;
  }
  return env;
}

if (!existsSync(tsc)) {
  const npm = process.env.npm_execpath;
  const [command, args] = npm && npm.endsWith(".js") ? [process.execPath, [npm]] : ["npm", []];
  const install = existsSync(join(root, "package-lock.json")) ? "ci" : "install";
  run(command, [...args, install, "--ignore-scripts", "--include=dev", "--no-audit", "--no-fund"], `installing the build dependencies (npm ${install})`);
}
// A clean output: files of modules since deleted must not be packed.
rmSync(join(root, "dist", "src"), { recursive: true, force: true });
run(process.execPath, [tsc, "-p", join(root, "tsconfig.build.json")], "compiling src/ into dist/ (tsc)");
