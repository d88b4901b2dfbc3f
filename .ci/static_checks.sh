#!/usr/bin/env bash
# Static checks that need the package laid out as installed: the import layers (import-linter; contracts in
# pyproject.toml, [tool.importlinter]) and types (mypy; [tool.mypy]). The checkout maps flows/ and tasks/ into the
# segflow package (pyproject.toml, package-dir), which neither tool follows, so both read a copy of the sources
# laid out as the wheel is.
set -euo pipefail
cd "$(dirname "$0")/.."
config="$PWD/pyproject.toml"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/segflow"
cp -r segflow/. "$tree/segflow/"
cp -r flows "$tree/segflow/flows"
cp -r tasks "$tree/segflow/tasks"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
cd "$tree"  # not the checkout: its segflow/ folder lacks flows/ and tasks/
PYTHONPATH="$tree" lint-imports "$config"
# types: every production module but the model adapters (segflow/tasks/stages: torch and numpy code, their
# settings included) and the demo; the records and the JSON documents strictly
PYTHONPATH="$tree" mypy --config-file "$config" segflow --exclude 'segflow/demo/' --exclude 'segflow/tasks/stages/'
PYTHONPATH="$tree" mypy --config-file "$config" segflow/tasks/stages/settings
PYTHONPATH="$tree" mypy --config-file "$config" --strict segflow/tasks/record.py segflow/tasks/records.py \
  segflow/tasks/documents.py
