# shellcheck shell=bash
# Sourced by launch/local.sh and launch/tpu_vm.sh (not run on its own): command lines printed by
# --dry-run and sent over ssh. slurm_gpu.sbatch keeps its own copy: SLURM runs a spooled copy of
# the batch script, from where this file cannot be found.

# Print one argument so that a POSIX shell reads it back as exactly that argument. In
# `--flag=value` and `NAME=value` only the value is quoted: easier to read, and a
# `NAME=value` in front of a command stays an environment assignment.
shell_quote() {
  local arg=$1 prefix="" sq="'\\''"
  if [[ $arg =~ ^(--[A-Za-z0-9_.-]+=|[A-Za-z_][A-Za-z0-9_]*=)(.*)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    arg=${BASH_REMATCH[2]}
  fi
  if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s%s' "$prefix" "$arg"
  else
    printf "%s'%s'" "$prefix" "${arg//\'/$sq}"
  fi
}

# Join arguments into one shell command line, each argument quoted.
shell_join() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(shell_quote "$arg")"
  done
  printf '%s' "$out"
}
