"""The settings layer (torch-free): every stage's and backend's settings as typed dataclasses
with help text and validation, the choice lists defined once, the YAML loader, and the
command-line flags generated from the dataclasses (pluralign.settings.config)."""

from pluralign.settings.stages import (  # noqa: F401 (the layer's public names)
    BACKENDS,
    BASE_MEASURES,
    DEFAULT_BASE_MEASURE,
    EMPTY,
    ESTIMATORS,
    FEATURES,
    FLAVOURS,
    INITS,
    MAX_INPUT_MB,
    MISSPECIFY,
    OBJECTIVES,
    ON_ERROR,
    SELECTIONS,
    SERVE,
    TIES,
    USER_PRIORS,
    AggregateSection,
    EMSection,
    EvaluateSection,
    IngestOptions,
    IngestSection,
    RunSection,
    SimulationConfig,
    UserWeightsOptions,
    text_attributes,
)
