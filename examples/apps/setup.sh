#!/usr/bin/env bash
# What the example apps' tests (tests/test_apps.py, and tests/test_lm_apps.py for text generation) need
# beyond the Python packages: Node.js and npm, the Node.js app's and the web page's npm packages
# (onnxruntime, and for text generation the tokenizer and chat-template packages), and Debian's Chromium
# and ChromeDriver for the page's browser tests. Installs what is missing: Debian packages only as root,
# npm packages with --ignore-scripts (onnxruntime-node's install script downloads optional GPU binaries
# from outside the npm registry; the CPU binaries it ships are all the app uses). Exits 1, saying what is
# still missing, when it could not install everything; the tests that need it then skip and say so. Run
# again at any time: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"

debs=()
command -v node >/dev/null && command -v npm >/dev/null || debs+=(nodejs npm)
command -v chromium >/dev/null || debs+=(chromium)
command -v chromedriver >/dev/null || debs+=(chromium-driver)
if ((${#debs[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "examples/apps: installing ${debs[*]} (Debian)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${debs[@]}" >/dev/null
  else
    echo "examples/apps: ${debs[*]} not installed (as root: apt-get install ${debs[*]}); the apps' tests that need them will skip"
    status=1
  fi
fi

if command -v npm >/dev/null; then
  for app in node web; do
    # npm ci: exactly the versions in package-lock.json, in a fresh node_modules
    (cd "$app" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
  done
fi
exit "${status:-0}"
