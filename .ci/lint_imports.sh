#!/usr/bin/env bash
# Check the import layers (pyproject.toml, [tool.importlinter]) with import-linter. The checkout maps flows/ and
# tasks/ into the segflow package (pyproject.toml, package-dir), which import-linter cannot follow, so it reads a
# copy of the sources laid out as the installed package is.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/segflow"
cp -r segflow/. "$tree/segflow/"
cp -r flows "$tree/segflow/flows"
cp -r tasks "$tree/segflow/tasks"
find "$tree" -name __pycache__ -prune -exec rm -rf {} +
config="$PWD/pyproject.toml"
cd "$tree"  # not the checkout: its segflow/ folder lacks flows/ and tasks/
PYTHONPATH="$tree" lint-imports "$config"
