"""What the documents name exists: README's config fields, experiment files, modules, scripts and
tests; the modules' names in WORKSPACE's code map; the files BENCHMARKS cites.

README is what a user copies from, and WORKSPACE the next engineer's map. A field, function or file
renamed in the code would otherwise leave them naming something that is gone, found out from an
error or a search. Each test reads a document and checks its names against the code, without
running anything heavy.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import os
import re

import pytest
from helpers import load_file

from resnet_v2_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name: str) -> str:
    return open(os.path.join(REPO, name), encoding="utf-8").read()


README = read("README.md")
PACKAGE = os.path.join(REPO, "resnet_v2_jax")


def section(title: str) -> str:
    """README's text under the `## title` heading, up to the next one."""
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:] if end < 0 else README[start:end]


def has_field(config, dotted: str) -> bool:
    node = config
    for key in dotted.split("."):
        if not hasattr(node, "keys") or key not in node:
            return False
        node = node[key]
    return True


def test_every_config_override_the_readme_shows_is_a_field():
    overrides = sorted(set(re.findall(r"--config\.([\w.]+)=", README)))
    assert len(overrides) >= 3, overrides  # batch_size, model.dtype, model.remat, ...
    default = config_lib.default()
    assert [o for o in overrides if not has_field(default, o)] == []


def test_every_option_in_the_model_options_table_is_a_field():
    rows = [line for line in section("Model options").splitlines() if line.startswith("| `")]
    names = [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert "bn_pallas_sums" in names and "explicit_data_parallel" in names
    default = config_lib.default()
    missing = [n for n in names if n not in default.model and n not in default]
    assert missing == []
    # Every field of the config's model that says how the step compiles is in the table.
    compile_fields = {"scan", "scan_unroll", "remat", "remat_policy", "bn_recompute_mask",
                      "bn_partial_sums", "bn_pallas_sums", "bn_recompute_output", "conv1x1_fusion",
                      "stem_space_to_depth", "stem_align_channels", "scan_unit_reads"}
    assert compile_fields <= set(default.model) and compile_fields <= set(names)


def test_the_defaults_the_model_options_table_states_are_the_configs():
    """The table's "default" column against `config.default()` and the ImageNet experiments'."""
    default = config_lib.default()
    imagenet = config_lib.imagenet(50, -1.0, "scale", 224)
    stated = {}
    for row in section("Model options").splitlines():
        cells = [c.strip() for c in row.split("|")[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):
            stated[re.findall(r"`(\w+)`", cells[0])[0]] = cells[2]  # `remat`, `remat_policy`: off

    def value(config, name):
        return config.model[name] if name in config.model else config[name]

    for name, said in stated.items():
        if said == "on":
            assert value(default, name) is True, name
        elif said == "off":
            assert value(default, name) is False, name
        elif said == "ImageNet experiments":
            assert (value(default, name), value(imagenet, name)) == (False, True), name
    assert list(stated.values()).count("ImageNet experiments") == 3


@pytest.mark.parametrize("path, arg", sorted(set(re.findall(r"experiments/(\w+\.py)(?::([\w,]+))?", README))))
def test_every_experiment_the_readme_names_loads_and_validates(path, arg):
    full = os.path.join(REPO, "experiments", path)
    assert os.path.exists(full), path
    if arg is None and path.startswith("table") or arg and arg.split(",")[0].isupper():
        return  # a table file's placeholder (VARIANT; UNIT,DEPTH): the table's example lines run one
    module = load_file(f"experiments/{path}", f"readme_{path[:-3]}")
    config = module.get_config(arg) if arg else module.get_config()
    config_lib.validate(config)


def test_every_module_script_and_launcher_the_readme_runs_exists():
    modules = sorted(set(re.findall(r"python -m (resnet_v2_jax\.\w+)", README)))
    assert "resnet_v2_jax.main" in modules and "resnet_v2_jax.benchmark" in modules
    assert [m for m in modules if importlib.util.find_spec(m) is None] == []
    paths = sorted(set(re.findall(r"\b((?:bench|launch|notebooks|tests)/[\w./]+\.(?:py|sh|sbatch|ipynb|png))", README)))
    assert "bench/gpu_h200.png" in paths
    assert [p for p in paths if not os.path.exists(os.path.join(REPO, p))] == []


def test_every_test_the_reliability_table_names_exists():
    """"Every row is a test": each name in the table's last column is a test function (a name with
    `*` matches one at least), and a `[case]` is one of that test's parametrized ids."""
    sources = {}
    for name in os.listdir(os.path.join(REPO, "tests")):
        if name.endswith(".py"):
            sources[name] = open(os.path.join(REPO, "tests", name), encoding="utf-8").read()
    defined = {m for text in sources.values() for m in re.findall(r"^def (test_\w+)", text, re.M)}
    rows = [line for line in section("Reliability").splitlines() if line.startswith("| ") and "test_" in line]
    named = [n for row in rows for n in re.findall(r"`(test_[\w*]+(?:\[[^\]]+\])?)`", row.split("|")[-2])]
    assert len(rows) >= 12 and len(named) >= len(rows)
    missing = []
    for name in named:
        function, _, case = name.partition("[")
        if not fnmatch.filter(defined, function):
            missing.append(name)
        elif case and case != "...]":  # `[...]`: the row stands for all its cases
            home = next(text for text in sources.values() if re.search(rf"^def {function}\b", text, re.M))
            if not all(re.search(rf"\b{re.escape(c)}\b", home) for c in case.rstrip("]").split("/")):
                missing.append(name)
    assert missing == []


@pytest.mark.parametrize("document", ["README.md", "WORKSPACE.md", "BENCHMARKS.md"])
def test_every_module_name_a_document_gives_is_in_that_module(document):
    """`step.compile_train`, `layers._per_device` and the like: a module of the package, then a
    name it defines (or, for `config`, a config field). BENCHMARKS up to its Log: the log is history,
    in the names of its day."""
    modules = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py")}
    text = read(document).split("\n## Log")[0]
    refs = sorted({r for r in re.findall(r"`(?:resnet_v2_jax\.)?(\w+)\.(\w+)(?:\.(\w+))?[`(]", text)
                   if r[0] in modules and r[1] not in ("py", "json")})
    assert len(refs) >= {"README.md": 1, "WORKSPACE.md": 40, "BENCHMARKS.md": 10}[document], refs
    default = config_lib.default()
    missing = []
    for module_name, name, attribute in refs:
        module = importlib.import_module(f"resnet_v2_jax.{module_name}")
        if module_name == "config" and (name in default or name in default.model):
            continue
        if not hasattr(module, name) or attribute and not hasattr(getattr(module, name), attribute):
            missing.append(".".join(filter(None, (module_name, name, attribute))))
    assert missing == []


@pytest.mark.parametrize("document", ["WORKSPACE.md", "BENCHMARKS.md"])
def test_every_file_a_document_cites_is_in_the_repository(document):
    """Paths under the repository's folders; placeholders (`X.py`, `gpu_DATE`) and the git-ignored
    copy of the PyTorch peer are not files of the repository."""
    paths = set(re.findall(
        r"\b((?:bench|launch|notebooks|tests|experiments|resnet_v2_jax)/[\w./-]+"
        r"\.(?:py|sh|sbatch|ipynb|png|jsonl|md|txtpb|txt))", read(document)))
    placeholders = {p for p in paths if re.search(r"/(X|Y|NAME)\.py$|DATE|gpu_h100\.png|^bench/peer_torch\.py$", p)}
    assert len(paths - placeholders) >= 30
    assert sorted(p for p in paths - placeholders if not os.path.exists(os.path.join(REPO, p))) == []


def test_the_choices_readme_lists_are_the_configs():
    """The Model options bullets for `unit`, `shortcut` and `block` list exactly the valid choices."""
    bullets = {m.group(1): m.group(2) for m in
               re.finditer(r"^- `(\w+)`: (.*(?:\n  .*)*)", section("Model options"), re.M)}

    def listed(name):  # the backticked words of a bullet, less its parenthesised sub-fields
        return tuple(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", bullets[name].split(";")[0])))

    assert listed("unit") == config_lib.UNITS
    assert listed("shortcut") == config_lib.SHORTCUTS
    assert listed("block") == config_lib.BLOCKS
