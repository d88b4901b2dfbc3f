#!/usr/bin/env bash
# A Label Studio server for the review round-trip test (tests/flows/test_label_studio.py), in its own venv:
# label-studio pins versions (pyarrow < 25, an `attr` package that shadows attrs' module, ...) that conflict with
# segflow's own dependencies, so it never shares their environment. Also a data dir migrated once (`label-studio
# init`, about a minute), which the test copies and starts in seconds.
#   usage: bash tests/support/setup_label_studio.sh     (idempotent; SEGFLOW_LABEL_STUDIO_HOME overrides the place)
set -euo pipefail
cd "$(dirname "$0")/../.."
home="${SEGFLOW_LABEL_STUDIO_HOME:-.label-studio}"
version="1.23.2"
if [ ! -x "$home/venv/bin/label-studio" ] || ! "$home/venv/bin/pip" show label-studio 2>/dev/null | grep -q "^Version: $version$"; then
  python -m venv "$home/venv"
  if ! "$home/venv/bin/pip" install -q "label-studio==$version" > "$home/install.log" 2>&1; then
    tail -20 "$home/install.log" >&2
    exit 1
  fi
fi
if [ ! -f "$home/template/label_studio.sqlite3" ]; then
  rm -rf "$home/template"
  LABEL_STUDIO_BASE_DATA_DIR="$home/template" DJANGO_DB=sqlite SENTRY_DSN= FRONTEND_SENTRY_DSN= \
    "$home/venv/bin/label-studio" init --quiet --data-dir "$home/template" > "$home/init.log" 2>&1 \
    || { tail -20 "$home/init.log" >&2; exit 1; }
fi
echo "label-studio $version ready in $home"
