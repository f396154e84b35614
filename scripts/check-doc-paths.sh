#!/usr/bin/env bash
# Fails when a document names a path, a test or a function the tree does not
# have (issue 17: "nothing refers to paths that moved"). Reads every
# `backticked` span of the documents and checks:
#
# - a path (has a `/`, or ends in .rs .md .sh .py .toml): some file git knows
#   is that path or ends in `/<path>` (a folder, `engine/peer/`: some file is
#   under it). Paths in the docs are written from the workspace root or from
#   their crate's `src/` (`machine/al.rs`), so the suffix is enough;
# - `file.rs::name` and `file.rs::Type::name`: some file matching `file.rs`
#   defines `fn name` (a test, or the function the row points at);
#   `::name` alone continues the last file named on the same line;
# - a qualified name (`Node::poll_timeout`, `ControlCmd::Down`) or a
#   snake_case name with an underscore (`try_complete_write`): the last
#   segment is a word of some tracked .rs file or shell script (.sh, ocf/).
#
# Absolute paths (`/dev/ublkbN`, `/proc/...`), templates (`<run-dir>/..`),
# commands and anything with a space are not checked, nor the few spans
# below that name something outside the tree (the VM harness's work and
# cache folders, the shared lab notes, a kernel module, pair states,
# formulas).
#
# Usage: scripts/check-doc-paths.sh [DOC...]  (default: ARCHITECTURE.md and
# the READMEs). Exit status 1 when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -gt 0 ]; then
  docs=("$@")
else
  docs=(ARCHITECTURE.md README.md cluster-agent/README.md vm-tests/README.md)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
git ls-files --cached --others --exclude-standard | sort -u > "$tmp/files"
grep -E '\.rs$' "$tmp/files" > "$tmp/rs" || true
# Every word of the Rust sources and of the shell scripts (the OCF agent
# in ocf/ has no suffix), once.
{ cat "$tmp/rs"; grep -E '\.sh$|^ocf/' "$tmp/files" || true; } | tr '\n' '\0' | xargs -0 cat 2>/dev/null \
  | grep -oE '[A-Za-z_][A-Za-z0-9_]*' | sort -u > "$tmp/words"

# The files a doc path names: equal to it, or ending in /path.
matches() {
  local p=$1
  awk -v p="$p" '
    { f = $0 }
    f == p { print f; next }
    length(f) > length(p) && substr(f, length(f) - length(p)) == "/" p { print f }
  ' "$tmp/files"
}

# A folder a doc names: some file under it.
is_dir() {
  local d=$1
  awk -v d="$d" '
    index($0, d) == 1 || index($0, "/" d) > 0 { found = 1; exit }
    END { exit !found }
  ' "$tmp/files"
}

outside() {
  case "$1" in
    WORK/* | CACHE/* | lib/modules | shared/* | cmd.sh | guest.sh) return 0 ;;
    UpToDate/* | D/2 | r_b | r_w | crc32c_intel) return 0 ;;
  esac
  return 1
}

misses=0
checked=0
miss() {
  echo "$1:$2: $3"
  misses=$((misses + 1))
}

is_pathlike() {
  case "$1" in
    */* | *.rs | *.md | *.sh | *.py | *.toml) return 0 ;;
  esac
  return 1
}

for doc in "${docs[@]}"; do
  [ -f "$doc" ] || { miss "$doc" 0 "document not found"; continue; }
  # One "LINE<TAB>SPAN" per backticked span; fenced code blocks skipped.
  awk '
    /^[[:space:]]*```/ { fence = !fence; next }
    fence { next }
    {
      s = $0
      while ((i = index(s, "`")) > 0) {
        s = substr(s, i + 1)
        j = index(s, "`")
        if (j == 0) break
        print NR "\t" substr(s, 1, j - 1)
        s = substr(s, j + 1)
      }
    }
  ' "$doc" > "$tmp/spans"

  last_line=0
  last_file=""
  while IFS=$'\t' read -r line tok; do
    [ "$line" = "$last_line" ] || last_file=""
    last_line=$line
    case "$tok" in
      "" | *" "* | /* | *"<"* | *"{"* | *"\$"* | *"*"* | *"="* | *'"'* | *"~"* | *".."* | -*) continue ;;
    esac
    outside "$tok" && continue
    file=""
    rest=""
    if [[ "$tok" == ::* ]]; then
      [ -n "$last_file" ] || continue
      file=$last_file
      rest=${tok#::}
    elif [[ "$tok" == *.rs::* ]]; then
      file=${tok%%.rs::*}.rs
      rest=${tok#*.rs::}
    elif is_pathlike "$tok"; then
      file=$tok
    fi

    if [ -n "$file" ]; then
      checked=$((checked + 1))
      if [[ "$file" == */ ]]; then
        is_dir "$file" || miss "$doc" "$line" "no folder $file"
        continue
      fi
      found=$(matches "$file")
      if [ -z "$found" ] && [ -z "$rest" ] && [[ "$file" != *.* ]] && is_dir "$file/"; then
        continue
      fi
      if [ -z "$found" ]; then
        miss "$doc" "$line" "no file $file"
        continue
      fi
      [[ "$file" == *.rs ]] && last_file=$file
      if [ -n "$rest" ]; then
        name=${rest##*::}
        # shellcheck disable=SC2086
        if ! grep -qE "fn ${name}\b" $found; then
          miss "$doc" "$line" "no fn $name in $file ($tok)"
        fi
      fi
      continue
    fi

    # Names: qualified ones, and snake_case ones with an underscore.
    if [[ "$tok" =~ ^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)+$ ]] \
      || [[ "$tok" =~ ^[a-z][a-z0-9]*_[a-z0-9_]*$ ]]; then
      checked=$((checked + 1))
      name=${tok##*::}
      grep -qxF "$name" "$tmp/words" || miss "$doc" "$line" "no name $name in the sources ($tok)"
    fi
  done < "$tmp/spans"
done

if [ "$misses" -gt 0 ]; then
  echo "$misses of $checked paths, tests and names in ${docs[*]} not found"
  exit 1
fi
echo "all $checked paths, tests and names in ${docs[*]} found"
