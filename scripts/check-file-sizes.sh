#!/usr/bin/env bash
# Fails when a Rust source file is over 1,200 lines (issue 17: a file a
# reader can hold). Test files do not count: anything under a tests/
# directory, and files named tests.rs or *_tests.rs (a module's tests in a
# file of their own). Reads the files git knows (tracked, or new and not
# ignored), so target/ and other build output never count.
set -euo pipefail
cd "$(dirname "$0")/.."

limit=1200
over=0
while IFS= read -r f; do
  [ -f "$f" ] || continue
  case "$f" in
    tests/* | */tests/* | tests.rs | */tests.rs | *_tests.rs) continue ;;
  esac
  n=$(wc -l < "$f")
  if [ "$n" -gt "$limit" ]; then
    echo "$f: $n lines (limit $limit)"
    over=$((over + 1))
  fi
done < <(git ls-files --cached --others --exclude-standard -- '*.rs' | sort)

if [ "$over" -gt 0 ]; then
  echo "$over file(s) over $limit lines (test files aside)"
  exit 1
fi
echo "no source file over $limit lines (test files aside)"
