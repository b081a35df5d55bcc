#!/bin/sh
# Copies the pinned front-end libraries (package-lock.json) into ../vendor, with their licenses.
# Run by `make web-vendor`; the copies are committed and served by the appliance (no CDN, no build step).
set -eu
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund
out=../vendor
rm -rf "$out" && mkdir -p "$out"
cp node_modules/uplot/dist/uPlot.esm.js node_modules/uplot/dist/uPlot.min.css "$out/"
cp node_modules/uplot/LICENSE "$out/uPlot.LICENSE"
cp node_modules/qrcode-generator/dist/qrcode.mjs "$out/qrcode.js"  # .js: served as JavaScript everywhere
# qrcode-generator ships no LICENSE file: its MIT notice is the header of the source file.
sed -n '1,/^\/\/-\{5,\}$/p' node_modules/qrcode-generator/dist/qrcode.mjs | head -14 > "$out/qrcode-generator.LICENSE"
cp node_modules/axe-core/axe.min.js "$out/"
cp node_modules/axe-core/LICENSE "$out/axe-core.LICENSE"
for p in uplot qrcode-generator axe-core; do
  node -e "const p=require('./node_modules/$p/package.json'); console.log(p.name+' '+p.version+' '+p.license)"
done > "$out/VERSIONS"
