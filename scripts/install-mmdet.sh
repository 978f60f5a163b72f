#!/usr/bin/env bash
# Install the mmdet extra: MMDetection 3.3.0 needs mmcv 2.1.0 with its compiled operators,
# which PyPI has only as source.
# - With ../shared/wheels beside the checkout (a wheel built against torch 2.14.1), pip takes
#   mmcv from there: seconds.
# - Otherwise mmcv is built from source: about 17 minutes on 2 idle cores (50+ on busy ones).
#   The build needs torch installed first, setuptools<82 (mmcv's setup.py imports
#   pkg_resources), no build isolation, ninja, and C++20 instead of mmcv's hard-coded
#   -std=c++17 (torch 2.14's headers require C++20): a CXX wrapper rewrites the flag.
set -euo pipefail
PIP=${PIP:-.venv/bin/python -m pip}
here=$(cd "$(dirname "$0")/.." && pwd)
wheels="$here/../shared/wheels"
$PIP install -q "setuptools<82" ninja
if [ -d "$wheels" ] && ls "$wheels"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
  $PIP install -q --find-links "$wheels" -e "$here[mmdet]"
  exit 0
fi
echo "building mmcv 2.1.0 from source (about 17 minutes on 2 cores)..." >&2
wrapper=$(mktemp -d)/cxx
cat > "$wrapper" <<'WRAP'
#!/usr/bin/env bash
args=()
for a in "$@"; do [ "$a" = "-std=c++17" ] && a="-std=c++20"; args+=("$a"); done
exec g++ "${args[@]}"
WRAP
chmod +x "$wrapper"
CXX="$wrapper" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=$(nproc) $PIP install --no-build-isolation "mmcv==2.1.0"
$PIP install -q -e "$here[mmdet]"
