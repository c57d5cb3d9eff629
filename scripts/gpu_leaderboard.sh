#!/usr/bin/env bash
# The GPU runner's job (.github/workflows/leaderboard.yml), as a plain script that also runs by hand:
#   1. install the package (a venv in .venv unless --python is given);
#   2. run the sweep files (default: sweeps/paper_*.yaml) with --skip-unknown, so what exists runs;
#   3. regenerate leaderboard.md (and its plots) from the records;
#   4. unless --no-pr: commit the records and the leaderboard on a new branch, push it, and open a pull request
#      with `gh` (needs GH_TOKEN or GITHUB_TOKEN).
#
# usage: scripts/gpu_leaderboard.sh [options] [SWEEP.yaml ...]
#   --profile P       run every sweep on profile P instead of the files' own (the tests use micro/tiny)
#   --executor E      local (default) or ray
#   --jobs N          runs at a time (local: processes; ray: CPUs of the local instance)
#   --results-dir D   records folder (default: results)
#   --output F        the leaderboard (default: leaderboard.md)
#   --python PY       interpreter to use; no venv is created (default: .venv/bin/python, created if absent)
#   --extras E        pip extras to install (default: none; "ray" with --executor ray)
#   --no-install      skip the pip install
#   --no-pr           no branch, commit, push or pull request
#   --base B          the pull request's base branch (default: main)
#   --                anything after it goes to `python -m benchmark sweep` as it is
# Paths are taken relative to the repository root (the script changes into it first).
# Exit status: 2 for bad usage or an invalid sweep file (nothing ran); otherwise the sweep's (1 when a run failed),
# after the leaderboard and the pull request were made from what finished.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

profile="" executor="local" jobs="" results="results" output="leaderboard.md" py="" extras="" install=1 pr=1
base="main"
sweeps=() passthrough=()
die() { echo "gpu_leaderboard: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) need "$@"; profile="$2"; shift 2 ;;
    --executor) need "$@"; executor="$2"; shift 2 ;;
    --jobs) need "$@"; jobs="$2"; shift 2 ;;
    --results-dir) need "$@"; results="$2"; shift 2 ;;
    --output) need "$@"; output="$2"; shift 2 ;;
    --python) need "$@"; py="$2"; shift 2 ;;
    --extras) need "$@"; extras="$2"; shift 2 ;;
    --base) need "$@"; base="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --no-pr) pr=0; shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; passthrough=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) sweeps+=("$1"); shift ;;
  esac
done
if [[ ${#sweeps[@]} -eq 0 ]]; then
  sweeps=(sweeps/paper_*.yaml)
fi
for f in "${sweeps[@]}"; do [[ -f "$f" ]] || die "no sweep file $f"; done
[[ "$executor" == local || "$executor" == ray ]] || die "--executor is local or ray, not $executor"
if [[ -z "$extras" && "$executor" == ray ]]; then extras="ray"; fi

# 1. install
if [[ -z "$py" ]]; then
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  py=".venv/bin/python"
fi
if [[ $install == 1 ]]; then
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet -e ".${extras:+[$extras]}"
fi
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L || true; fi

# 2. the sweep (its table goes to a file too, for the pull request's text)
args=(--executor "$executor" --results-dir "$results" --skip-unknown --no-leaderboard --no-progress)
[[ -n "$profile" ]] && args+=(--profile "$profile")
[[ -n "$jobs" ]] && args+=(--jobs "$jobs")
summary="$(mktemp)"
trap 'rm -f "$summary"' EXIT
set +e
"$py" -m benchmark sweep "${sweeps[@]}" "${args[@]}" "${passthrough[@]}" | tee "$summary"
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 && $status -ne 1 ]]; then
  echo "gpu_leaderboard: the sweep stopped (exit $status); no leaderboard, no pull request" >&2
  exit "$status"
fi

# 3. the leaderboard, from every record
"$py" -m benchmark leaderboard --results-dir "$results" --output "$output"

# 4. the pull request
if [[ $pr == 0 ]]; then
  echo "gpu_leaderboard: --no-pr: records in $results, leaderboard in $output"
  exit "$status"
fi
export GH_TOKEN="${GH_TOKEN:-${GITHUB_TOKEN:-}}"
if ! command -v gh >/dev/null 2>&1 || [[ -z "$GH_TOKEN" ]]; then
  echo "gpu_leaderboard: no gh or no GH_TOKEN/GITHUB_TOKEN: not opening a pull request (use --no-pr to say so)" >&2
  exit 1
fi
plots="$(dirname "$output")/$(basename "$output" .md)"
git add -A -- "$results" "$output"
[[ -d "$plots" ]] && git add -A -- "$plots"
if git diff --cached --quiet; then
  echo "gpu_leaderboard: no new records; no pull request"
  exit "$status"
fi
label="${profile:-$(basename "${sweeps[0]}" .yaml)}"
branch="leaderboard/$label-$(date -u +%Y%m%d-%H%M%S)"
git checkout -q -b "$branch"
name="${GIT_AUTHOR_NAME:-github-actions[bot]}"
email="${GIT_AUTHOR_EMAIL:-41898282+github-actions[bot]@users.noreply.github.com}"
title="Leaderboard: $label sweep ($(date -u +%Y-%m-%d))"
git -c user.name="$name" -c user.email="$email" commit -q -m "$title" -m "Sweeps: ${sweeps[*]}"
git push -q origin "HEAD:refs/heads/$branch"
body="$(mktemp)"
{
  echo "Records and the regenerated \`$output\` from \`scripts/gpu_leaderboard.sh ${sweeps[*]}\`"
  echo "at $(git rev-parse --short HEAD~1) on $(hostname)."
  echo
  echo '```'
  tail -n 200 "$summary"
  echo '```'
} >"$body"
gh pr create --base "$base" --head "$branch" --title "$title" --body-file "$body"
rm -f "$body"
exit "$status"
