#!/usr/bin/env bash
# Set up and run attmemo from a fresh clone:
#   ./run.sh demo     export the bundled all-MiniLM-L6-v2, then calibrate + eval on edited and diverse text
#   ./run.sh test     run the test suite
# Creates ./.venv on first use (or when pyproject.toml changes) and installs
# attmemo with its export, eval and test extras. Extra arguments go to the command.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ATTMEMO_VENV:-.venv}"

setup() {
    # ATTMEMO_NO_SETUP=1 runs in an environment that already has attmemo installed (used by tests).
    [[ "${ATTMEMO_NO_SETUP:-0}" == "1" ]] && return
    local stamp="$VENV/.attmemo-installed"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    echo "setting up $VENV (first run takes a few minutes) ..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[export,eval,test]"
    echo "$want" > "$stamp"
}

command="${1:-}"
shift || true
case "$command" in
    demo) setup; exec "$VENV/bin/attmemo" demo "$@" ;;
    test) setup; exec "$VENV/bin/python" -m pytest "$@" ;;
    *) echo "usage: ./run.sh demo|test [args...]" >&2; exit 2 ;;
esac
