#!/usr/bin/env bash
# `make breaking`: buf breaking (buf.yaml's FILE rules) of the protos in the
# working tree against the last commit that landed on main:
#   - on main, or on a detached HEAD at main's tip (CI on a clone of main):
#     the commit before HEAD (.git#ref=HEAD~1)
#   - on any other branch, or a detached HEAD elsewhere: main's tip
#     (.git#branch=main); without a local main, the commit before HEAD
# With no commit to compare against (the repository's first commit, or a
# shallow clone without HEAD's parent) it says so and passes.
# BUF names the buf to run (default: the repository's node_modules/.bin/buf).
set -euo pipefail
buf=${BUF:-$(cd "$(dirname "$0")/.." && pwd)/node_modules/.bin/buf}
cd "$(git rev-parse --show-toplevel)"

head=$(git rev-parse -q --verify HEAD) || {
  echo "buf breaking: no commit yet, nothing to compare against"
  exit 0
}
branch=$(git symbolic-ref -q --short HEAD || true)
main=$(git rev-parse -q --verify refs/heads/main || true)

if [ -n "$main" ] && [ "$branch" != main ] && { [ -n "$branch" ] || [ "$main" != "$head" ]; }; then
  against='.git#branch=main'
  what="main (${main:0:12})"
elif parent=$(git rev-parse -q --verify 'HEAD~1'); then
  against='.git#ref=HEAD~1'
  what="the previous commit (${parent:0:12})"
else
  why="it is the first commit"
  [ "$(git rev-parse --is-shallow-repository)" = true ] && why="this is a shallow clone"
  echo "buf breaking: HEAD (${head:0:12}) has no parent here ($why), nothing to compare against"
  exit 0
fi

echo "buf breaking against $what"
exec "$buf" breaking --against "$against"
