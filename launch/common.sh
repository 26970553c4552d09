# shellcheck shell=bash
# What launch/tpu_vm.sh and launch/xpk.sh share: usage and errors, option values, printing and
# (unless --dry-run) running commands, and reading bigvar.main's flags. Sourced, not run.
# (launch/slurm.sbatch keeps its own copies: sbatch runs a spooled copy of the script, away from
# this directory.)

usage() { sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p;}' "$0"; }

die() {  # a usage error: the message, a hint, exit status 2
  local script
  script=$(basename "$0")
  echo "$script: $*" >&2
  echo "Run 'launch/$script --help' for the commands and options." >&2
  exit 2
}

value() {  # prints option $1's value; called as X=$(value "$@"), so die's exit 2 ends the script
  if (($# < 2)) || [[ $2 == --* ]]; then die "$1 needs a value"; fi
  printf '%s\n' "$2"
}

quote() {  # $1 as one shell word, quoted only if it needs to be (like Python's shlex.quote)
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then  # --flag='a value', easier to read
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run_cmd() {  # prints `+ command`; runs it unless DRY_RUN=1
  local line="+" word
  for word in "$@"; do line+=" $(quote "$word")"; done
  if ((DRY_RUN)); then
    echo "$line"
  else
    echo "$line" >&2
    "$@"
  fi
}

has_flag() {  # whether bigvar.main flag $1 (--flag=value or --flag value) is in BIGVAR_FLAGS
  local flag
  for flag in "${BIGVAR_FLAGS[@]}"; do
    if [[ $flag == "$1" || $flag == "$1="* ]]; then return 0; fi
  done
  return 1
}
