"""One settings layer: every field of a stage's settings is reachable from its YAML section
and from its command's flags, generated from the same dataclass (so they cannot drift)."""

from __future__ import annotations

import dataclasses

import pytest

from pluralign.cli import build_parser
from pluralign.settings import (
    AggregateSection,
    EMSection,
    EvaluateSection,
    IngestOptions,
    IngestSection,
    SimulationConfig,
)
from pluralign.settings import config as C
from pluralign.stages.pipeline import SECTIONS, PipelineConfig

#: command, settings class, YAML section, fields the command takes otherwise (or not at all)
COVERED = [("ingest", IngestOptions, "ingest", ()),
           ("simulate", SimulationConfig, "simulate", ()), ("em", EMSection, "em", ()),
           ("aggregate", AggregateSection, "aggregate", ()),
           ("evaluate", EvaluateSection, "evaluate", ("data",))]


def _dests(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest for a in sub.choices[command]._actions}


@pytest.mark.parametrize(("command", "cls", "section", "elsewhere"), COVERED)
def test_every_setting_is_a_flag_and_a_yaml_key(command, cls, section, elsewhere):
    names = {f.name for f in dataclasses.fields(cls)}
    assert names - _dests(command) == set()
    yaml = IngestSection if section == "ingest" else cls  # the pipeline's section adds inputs
    assert section in SECTIONS and names <= set(C.dataclass_fields(yaml))


def test_a_flag_and_its_yaml_key_give_the_same_value_and_the_same_refusal(tmp_path, cli):
    parser = build_parser()
    args = parser.parse_args(["aggregate", "--run", "r", "--samples", "3", "--no-merge",
                              "--type-weights", "1,2", "--objective", "paper"])
    flags = C.from_flags(AggregateSection, args)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("simulate: {}\naggregate: {n_samples: 3, merge: false, "
                      "type_weights: [1, 2], objective: paper}\n")
    assert PipelineConfig.load(recipe).aggregate == flags
    assert flags.n_boot == AggregateSection().n_boot  # a flag not given: the field's default
    recipe.write_text("simulate: {}\naggregate: {served_prompts: 1}\n")
    with pytest.raises(C.ConfigError, match="served_prompts must be 0 \\(all\\) or >= 2"):
        PipelineConfig.load(recipe)
    rc, _, err = cli("aggregate", "--run", tmp_path, "--served-prompts", "1")
    assert rc == 2 and "--served-prompts must be 0 (all) or >= 2, got 1" in err


def test_em_settings_and_the_estimators_init_take_the_same_names_and_defaults():
    """Adding an EM parameter: its settings field and EMDPO's __init__ (scikit-learn needs an
    explicit one); YAML, flags and the run's key follow the settings field."""
    import inspect

    from pluralign.em.estimator import EMDPO
    from pluralign.settings import EMSection
    objects = {"self", "backend_options", "checkpoint_dir", "callback", "init_options"}
    init = {name: p.default for name, p in inspect.signature(EMDPO.__init__).parameters.items()
            if name not in objects}
    fields = {f.name: f.default for f in dataclasses.fields(EMSection)}
    assert fields == init
    assert {f.name for f in dataclasses.fields(EMSection)} - _dests("em") == set()


@pytest.mark.parametrize("backend", ["linear", "lora"])
def test_every_backend_setting_is_a_prefixed_flag_of_em_and_a_yaml_key(backend):
    from pluralign.settings.backends import BACKEND_CONFIGS
    cls = BACKEND_CONFIGS[backend]
    names = {f.name for f in dataclasses.fields(cls)} - {"types"}  # types: EM's n_types
    assert {f"{backend}.{n}" for n in names} - _dests("em") == set()
    assert backend in SECTIONS


def test_backend_flags_override_the_yaml_section(tmp_path):
    from pluralign.stages.em import EMSettings
    config = tmp_path / "c.yaml"
    config.write_text("em: {backend: lora}\nlora: {rank: 16, alpha: 8}\nlinear: {l2: 3}\n")
    parser = build_parser()
    args = parser.parse_args(["em", "--data", "d", "--out", "o", "--lora-rank", "4",
                              "--lora-target-modules", "q_proj", "v_proj",
                              "--no-lora-trunk-cache", "--linear-l2", "0.5"])
    settings = EMSettings.from_sources(str(config), args)
    assert settings.backend_options["rank"] == 4 and settings.backend_options["alpha"] == 8
    assert list(settings.backend_options["target_modules"]) == ["q_proj", "v_proj"]
    assert settings.backend_options["trunk_cache"] is False
    assert settings.init_options["l2"] == 0.5  # the linear start of a LoRA run
    with pytest.raises(SystemExit):  # argparse refuses a value of the wrong type
        parser.parse_args(["em", "--data", "d", "--out", "o", "--lora-rank", "four"])
