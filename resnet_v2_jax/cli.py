"""What every command-line entry point shares: the `--config` flag and readable flag errors.

absl prints a usage dump and exits 1 on a bad flag; ml_collections raises a traceback-like
message for an unknown `--config.x` override. Both become one line on stderr and exit code 2,
the convention for a usage error, before anything is built or compiled.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags
from ml_collections import config_flags


def define_config_flag(flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None) -> None:
    """`--config` in `flag_values`; `argv`: the command line its `--config.x` overrides are read from
    when it is not sys.argv (ml_collections reads them from there, not from the parser's argv)."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment file (experiments/X.py[:args]); override fields as --config.a.b=v.",
        flag_values=flag_values, lock_config=True, sys_argv=argv,
    )


def _one_line(message: str) -> str:
    message = str(message)
    if "Traceback" in message:  # an exception inside the config file's get_config(): keep its last line
        last = [line for line in message.splitlines() if line.strip()][-1].strip()
        message = f"{message.split(':', 1)[0]}: {last}"
    message = " ".join(message.split())
    # ml_collections: 'Key "x" does not exist and cannot be overridden...' -> keep it, drop noise.
    return message.replace("; Did you mean:", "; did you mean:")


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """`flag_values(argv)` with every error as one line on stderr and exit code 2."""
    def fail(message: str):
        print(f"error: {_one_line(message)}", file=sys.stderr)
        sys.exit(2)

    try:
        rest = flag_values(argv)
        if "config" in flag_values:
            if flag_values.config is None:
                fail("--config is required (e.g. --config=experiments/quickstart.py)")
            flag_values.config.keys()  # the config file loads lazily: surface its errors here
    except flags.Error as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        print(f"usage: python -m {_module_name(argv)} --config=experiments/X.py [--config.field=value ...]",
              file=sys.stderr)
        sys.exit(2)
    except (KeyError, AttributeError) as e:  # an override naming a field the config does not have
        fail(_unknown_field(str(e.args[0]) if e.args else str(e), argv))
    except OSError:
        path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")
        fail(f"cannot load the --config file {path!r}: no such file, or it failed to import")
    except (ValueError, TypeError) as e:
        fail(str(e).splitlines()[0])
    return rest


def _unknown_field(error: str, argv: list[str]) -> str:
    """One line for ml_collections' error on an override of a field the config lacks. Its text comes
    quoted, sometimes escaped twice, with a suggestion on a second line: keep the field, the flag
    that named it, and the suggestion."""
    suggestion = re.search(r'Did you mean \W*"(\w+)\W*" instead of \W*"(\w+)', error)
    key = suggestion.group(2) if suggestion else (re.findall(r"\w+", error) or ["?"])[0]
    flag = next((a.split("=")[0] for a in argv
                 if a.startswith("--config.") and key in a.split("=")[0].split(".")[1:]), None)
    return (f"unknown config field '{key}'" + (f" in {flag}" if flag else "")
            + (f' (did you mean "{suggestion.group(1)}"?)' if suggestion else "")
            + "; see the experiment file or `python -m resnet_v2_jax.summary --config=... --json` for the fields")


def _module_name(argv: list[str]) -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec else argv[0]


def run(main, define_flags=None, argv: list[str] | None = None) -> None:
    """Runs an absl `main` with readable flag errors; `define_flags` first (when the module defines
    its flags lazily, so importing it as a library defines none), `argv` instead of sys.argv."""
    if define_flags is not None:
        define_flags()
    if argv is not None:
        sys.argv = list(argv)
    app.run(main, flags_parser=parse_flags)
