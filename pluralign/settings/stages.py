"""The settings of the pipeline's stages as typed dataclasses, torch-free: help text,
defaults and validation live here once; YAML sections map onto them
(pluralign.settings.config) and the command line's flags are generated from them
(config.add_flags). The choice lists are defined here and imported by the modules that act on
them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pluralign.core import checks
from pluralign.core.checks import user_path

#: The policy backends a run can use (pluralign.backends.make_backend builds them).
BACKENDS = ("linear", "lora")
#: How aggregate estimates the regret matrix.
ESTIMATORS = ("candidates", "sampled")
#: The base measure of a policy restricted to a prompt's candidates; the first is the default.
BASE_MEASURES = ("uniform", "reference")
DEFAULT_BASE_MEASURE = BASE_MEASURES[0]
#: Regret under the KL-regularised value, or expected reward only (the reference MMRA).
OBJECTIVES = ("kl", "paper")
#: What ingest does with a bad row.
ON_ERROR = ("fail", "skip")
#: An empty response: a real answer, or a bad row.
EMPTY = ("keep", "reject")
#: Scored and long layouts: keep the strictly ordered top of a ranking with ties, or reject it.
TIES = ("truncate", "reject")
#: Default limit on an input file's size once decompressed (ingest max_input_mb): a small .gz
#: can expand a thousandfold, and every byte is held in memory while rows are read.
MAX_INPUT_MB = 1024
#: The linear backend's features.
FEATURES = ("given", "onehot", "embedding")
#: How EM-DPO chooses K with n_types auto, and how it starts.
SELECTIONS = ("cv", "heldout", "bic")
INITS = ("auto", "kmeans", "linear", "random")
#: How a user is served (DESIGN §10): the geometric mixture of the type policies at their
#: posterior (the policy minimising their expected KL regret), or their most likely type's.
SERVE = ("posterior", "argmax", "weights")
#: The prior over a user's own weights on the type basis (personalize.user_weights).
USER_PRIORS = ("typed", "gaussian")
#: Simulated populations: numeric features, or English text; misspecified annotator kinds.
FLAVOURS = ("feature", "text")
MISSPECIFY = ("random", "mixed", "noisy", "blend")
#: What simulate --from-groups does with the no-answer options.
REFUSALS = ("drop", "keep")


#: The attributes the text flavour's responses vary in (pluralign.simulate.text renders them).
TEXT_ATTRIBUTES = ("length", "formality", "bullets", "caution", "enthusiasm")


def text_attributes() -> int:
    """How many attributes the text flavour's responses have."""
    return len(TEXT_ATTRIBUTES)


@dataclass
class RunSection:
    """Where the run goes and its seed."""

    out: str = field(default="runs/run", metadata={"help": "run folder (--out overrides)"})
    seed: int = field(default=0, metadata={
        "help": "seed of the held-out split, EM (unless em.random_state is set) and sampling"})

    def __post_init__(self) -> None:
        self.out = str(user_path(self.out, "out"))  # ~ expanded here as everywhere; "" refused
        checks.seed(self.seed, "seed")


@dataclass
class IngestOptions:
    """How input rows are read and checked: `pluralign ingest`'s flags and the keys of the
    pipeline's `ingest:` section (IngestSection adds what to read)."""

    preset: str = field(default="auto", metadata={
        "help": "input layout: auto, pairwise, ranked, scored, long or ratings"})
    on_error: str = field(default="fail", metadata={
        "help": "fail: stop at the first bad row, exit 2, write nothing; skip: reject bad rows "
                "into rejects.jsonl and go on", "choices": ON_ERROR})
    map: list[str] = field(default_factory=list, metadata={
        "help": "rename a source column to a canonical field, e.g. annotator_id=worker",
        "metavar": "CANONICAL=SOURCE", "nargs": "+"})
    ties: str = field(default="truncate", metadata={
        "help": "scored/long layouts: keep the strictly ordered top of a ranking with ties, or "
                "reject any row with a tie", "choices": TIES})
    empty_responses: str = field(default="keep", metadata={
        "help": "an empty-string response is a real empty answer (keep, with a warning) or a "
                "bad row (reject)", "choices": EMPTY})
    max_responses: int | None = field(default=None, metadata={
        "help": "a row with more responses is a bad row (default: no limit; lists over 64 "
                "are reported)", "metavar": "N"})
    list_size: int = field(default=4, metadata={"metavar": "M",
        "help": "ratings layout: the most items in one list made from a rater's ratings of a "
                "prompt's items (pluralign.ingest.ratings says how they are chosen)"})
    ratings_seed: int = field(default=0, metadata={"metavar": "S",
        "help": "ratings layout: the seed of the sampler that makes the lists"})
    default_prompt: str | None = field(default=None, metadata={"metavar": "TEXT",
        "help": "ratings layout: the prompt of rows without one (items rated against one "
                "question, such as 'How likely would you read this book?')"})
    max_input_mb: int = field(default=MAX_INPUT_MB, metadata={
        "help": "refuse an input file larger than this once decompressed, and a .gz expanding "
                "more than 100-fold past 64 MB (0: no limit)", "metavar": "MB"})

    def __post_init__(self) -> None:
        for name, choices in (("on_error", ON_ERROR), ("ties", TIES),
                              ("empty_responses", EMPTY)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.max_responses is not None:
            checks.at_least(self.max_responses, 2, "max_responses")
        checks.at_least(self.max_input_mb, 0, "max_input_mb")
        checks.at_least(self.list_size, 2, "list_size")


@dataclass
class IngestSection(IngestOptions):
    """What to read and how, and how many annotators to keep out of EM for evaluation."""

    inputs: list[str] = field(default_factory=list, metadata={
        "help": "files to ingest, or one canonical dataset folder (required unless the YAML "
                "has a simulate section)"})
    heldout_fraction: float = field(default=0.0, metadata={
        "help": "share of annotators held out of EM for aggregation and evaluation (0: none)"})
    seen_fraction: float = field(default=0.0, metadata={
        "help": "share of each remaining annotator's annotations held out of EM (into seen/), "
                "for the predictive curve of seen users (evaluate.predictive_orders); 0: none"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.inputs = [str(user_path(p, "an input")) for p in self.inputs]
        for name in ("heldout_fraction", "seen_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass
class AggregateSection:
    """How the regret matrix is estimated and the mixture found (pluralign aggregate)."""

    estimator: str = field(default="candidates", metadata={
        "help": "candidates: exact expectations over each prompt's candidate responses; "
                "sampled: generate from each policy and score the samples",
        "choices": ESTIMATORS})
    type_weights: list[float] | None = field(default=None, metadata={
        "help": "importance of each type (scales the regret matrix's rows)",
        "metavar": "W1,W2,..."})
    n_samples: int = field(default=8, metadata={"help": "sampled: responses per prompt",
                                                "flag": "--samples", "metavar": "N"})
    merge: bool = field(default=True, metadata={"help": "build the merged single adapter"})
    base_measure: str = field(default=DEFAULT_BASE_MEASURE, metadata={
        "help": "candidates: uniform (each policy restricted to a prompt's candidates is "
                "proportional to exp(log-ratio)) or reference (its LM probability, dominated by "
                "response length)", "choices": BASE_MEASURES})
    n_boot: int = field(default=1000, metadata={
        "help": "bootstrap replicates over held-out prompts for the regret intervals (0: none)",
        "metavar": "B"})
    served_samples: int = field(default=4, metadata={
        "help": "models that generate (LoRA), kl objective: responses decoded per held-out "
                "prompt from every deployable policy and scored exactly, to measure its regret "
                "as served (0: not measured)", "metavar": "N"})
    served_prompts: int = field(default=32, metadata={
        "help": "held-out prompts for the served regrets, a seeded random subset (0: all)",
        "metavar": "N"})
    served_tokens: int | None = field(default=None, metadata={
        "help": "decoding horizon of the served responses (default: max_response_tokens)",
        "metavar": "N"})
    served_tuning: bool = field(default=True, metadata={
        "help": "try other weights for the token-level merge (uniform, the MMRA mixture's) "
                "on held-out prompts besides the measured ones, and serve the best"})
    objective: str = field(default="auto", metadata={
        "help": "kl (regret under the KL-regularised value; the min-max merge is solved too), "
                "paper (expected reward, the reference MMRA) or auto (kl with candidates)",
        "choices": ("auto", *OBJECTIVES)})

    def __post_init__(self) -> None:
        if self.objective not in ("auto", *OBJECTIVES):
            raise ValueError(f"objective must be auto or one of {OBJECTIVES}, got "
                             f"{self.objective!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.base_measure not in BASE_MEASURES:
            raise ValueError(f"base_measure must be one of {BASE_MEASURES}, got "
                             f"{self.base_measure!r}")
        checks.at_least(self.n_samples, 1, "n_samples")
        checks.at_least(self.n_boot, 0, "n_boot")
        checks.at_least(self.served_samples, 0, "served_samples")
        checks.served_prompts(self.served_prompts, "served_prompts")
        if self.served_tokens is not None:
            checks.at_least(self.served_tokens, 1, "served_tokens")
        if self.type_weights is not None:
            checks.weights(self.type_weights, "type_weights")


@dataclass
class UserWeightsOptions:
    """How a user's own weights over the type basis are fitted (DESIGN §10): their prior is
    fitted to the run's training users, then each user's weights to their annotations."""

    user_prior: str = field(default="typed", metadata={
        "help": "typed: mass on each type's own weights plus a Gaussian between them (spike "
                "and slab: exact types predict as the posterior does); gaussian: the Gaussian "
                "alone", "choices": USER_PRIORS})
    user_shrinkage: float = field(default=0.1, metadata={
        "help": "the Gaussian's fitted covariance pulled towards a multiple of the identity, "
                "in [0, 1]"})

    def __post_init__(self) -> None:
        if not 0 <= self.user_shrinkage <= 1:
            raise ValueError(f"user_shrinkage must be in [0, 1], got {self.user_shrinkage}")

    def model_options(self) -> dict[str, Any]:
        """The options as personalize.user_weights.UserWeights takes them."""
        return {"typed": self.user_prior == "typed", "shrinkage": self.user_shrinkage}


@dataclass
class EvaluateSection(UserWeightsOptions):
    """Which annotations to evaluate on, and the predictive personalization experiment."""

    data: str | None = field(default=None, metadata={
        "help": "a held-out dataset folder; default: the ingest stage's held-out split, else "
                "the training data (in-sample)", "metavar": "HELDOUT_DIR"})
    n_boot: int = field(default=1000, metadata={
        "help": "bootstrap replicates over annotators (accuracies, ARI, personalization) and "
                "prompts (regrets) for the 95% intervals (0: none)", "metavar": "B"})
    predictive_orders: int = field(default=0, metadata={
        "help": "random orders per user of the predictive personalization experiment (reveal "
                "n of a user's annotations, predict the rest: pooled, most likely type, "
                "posterior predictive, user weights, oracle; suggested against random "
                "queries; DESIGN §10); 0 skips it", "metavar": "R"})
    seen: str | None = field(default=None, metadata={
        "help": "held-out annotations of the run's own annotators, for the predictive curve "
                "of seen users; default: the ingest stage's seen/ split, if any",
        "metavar": "SEEN_DIR"})

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least(self.n_boot, 0, "n_boot")
        checks.at_least(self.predictive_orders, 0, "predictive_orders")
        for name in ("data", "seen"):
            if getattr(self, name) is not None:
                setattr(self, name, str(user_path(getattr(self, name), name)))


@dataclass
class SimulationConfig:
    """What population to simulate; every field has a default but the flavour's essentials."""

    flavour: str = field(default="feature", metadata={
        "help": "feature: numeric features, linear rewards; text: English responses whose "
                "attributes drive each type's reward", "choices": FLAVOURS})
    types: int = field(default=3, metadata={"help": "number of annotator types K",
                                            "metavar": "K"})
    annotators: int = field(default=100, metadata={"metavar": "N",
                                                   "help": "number of annotators"})
    per_annotator: int = field(default=10, metadata={"metavar": "A",
                                                     "help": "annotations per annotator"})
    list_size: tuple[int, int] = field(default=(3, 3), metadata={
        "help": "candidates per annotation m, drawn uniformly from this inclusive range (on the "
                "command line: M, or MIN-MAX such as 3-5)", "parse": "range",
        "metavar": "M"})
    ranking_length: int | None = field(default=None, metadata={"metavar": "L",
        "help": "ranking length L (1 = top-1 choice); None ranks every candidate"})
    temperature: float = field(default=1.0, metadata={
        "metavar": "T", "help": "PL temperature: higher = noisier"})
    misspecify: dict[str, float] = field(default_factory=dict, metadata={
        "help": "fraction of annotators of each misspecified kind: random, mixed (a type per "
                "annotation), noisy (own temperature), blend (own reward, a random convex mix "
                "of the type rewards) (on the command line: KIND=FRACTION,...)",
        "parse": "fractions",
        "metavar": "KIND=FRACTION,..."})
    seed: int = field(default=0, metadata={"metavar": "S", "help": "random seed"})
    items: int | None = field(default=None, metadata={"metavar": "N",
        "help": "size of the item pool annotators draw from (items repeat across annotators)"})
    feature_dim: int = field(default=8, metadata={
        "metavar": "D", "help": "feature flavour: feature width"})
    scale: float = field(default=2.0, metadata={
        "metavar": "S", "help": "feature flavour: norm of each type's reward vector"})
    prior: tuple[float, ...] | None = field(default=None, metadata={"metavar": "P1,P2,...",
        "help": "type probabilities; None = uniform"})
    from_groups: str | None = field(default=None, metadata={"metavar": "FILE_OR_FOLDER",
        "help": "annotators who answer as their group does, from group answer distributions: "
                "an OpinionQA wave folder or a folder of waves (choose --attribute), or a "
                "list-of-records file {question, options, attribute, gold_distribution} "
                "(GlobalOpinionQA). One type per group; annotators = all of them, "
                "per_annotator = questions each, ranking_length 1 = top-1 choices, items = the "
                "question pool's size, prior = group shares; flavour, types, feature_dim and "
                "scale do not apply"})
    attribute: str | None = field(default=None, metadata={"metavar": "NAME",
        "help": "from_groups, OpinionQA: the attribute whose groups are the types (RACE, AGE, "
                "...)"})
    groups: list[str] = field(default_factory=list, metadata={"nargs": "+", "metavar": "GROUP",
        "help": "from_groups: the groups to simulate (default: every group but the "
                "non-answers 'nan' and 'Refused')"})
    shared_questions: bool = field(default=False, metadata={
        "help": "from_groups: every annotator answers the same questionnaire (questions every "
                "group has); otherwise each draws their own from their group's questions"})
    refusals: str = field(default="drop", metadata={"choices": REFUSALS,
        "help": "from_groups: drop the no-answer options (Refused, DK, Not sure) and "
                "renormalise, or keep them as answers"})
    min_groups: int = field(default=2, metadata={"metavar": "N",
        "help": "from_groups: a question enters the pool when at least this many of the chosen "
                "groups have a distribution for it (GlobalOpinionQA asks most questions in a "
                "few countries)"})
    separate_types: bool = field(default=True, metadata={
        "help": "feature flavour: type reward directions mutually orthogonal (when K <= "
                "feature_dim), so that K types are K distinct tastes; False draws them "
                "independently, and two types may nearly coincide",
        "flag": "--overlapping-types"})

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {self.flavour!r}")
        for name in ("types", "annotators", "per_annotator", "feature_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        lo, hi = self.list_size
        if not 2 <= lo <= hi:
            raise ValueError(f"list_size must satisfy 2 <= min <= max, got {self.list_size}")
        if self.flavour == "text" and hi > 2 ** text_attributes():
            raise ValueError(f"text flavour supports at most {2 ** text_attributes()} "
                             "candidates")
        if self.ranking_length is not None and self.ranking_length < 1:
            raise ValueError(f"ranking_length must be >= 1, got {self.ranking_length}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        unknown = set(self.misspecify) - set(MISSPECIFY)
        if unknown:
            raise ValueError(f"unknown misspecification {sorted(unknown)}; known: {MISSPECIFY}")
        if any(f < 0 for f in self.misspecify.values()) or sum(self.misspecify.values()) > 1:
            raise ValueError("misspecification fractions must be >= 0 and sum to at most 1")
        if self.refusals not in REFUSALS:
            raise ValueError(f"refusals must be one of {REFUSALS}, got {self.refusals!r}")
        if self.min_groups < 1:
            raise ValueError(f"min_groups must be >= 1, got {self.min_groups}")
        if self.from_groups is not None:
            self.from_groups = str(user_path(self.from_groups, "from_groups"))
        if self.prior is not None:
            p = [float(x) for x in self.prior]
            sized = len(p) == self.types or self.from_groups is not None  # groups: checked later
            if not sized or not all(math.isfinite(x) and x >= 0 for x in p) or \
                    abs(sum(p) - 1) > 1e-8:
                raise ValueError(f"prior needs {self.types} non-negative values summing to 1")
        if self.items is not None and self.items < 1:
            raise ValueError(f"items must be >= 1, got {self.items}")


@dataclass
class EMSection:
    """EM-DPO's parameters (pluralign.em.estimator.EMDPO, whose __init__ takes the same names and
    defaults: a test keeps them in step). Checked when EM starts, scikit-learn style."""

    backend: str = field(default="linear", metadata={
        "help": "policy backend", "choices": BACKENDS})
    n_types: int | str = field(default=3, metadata={
        "help": "number of types K, or auto (chosen by `selection` over 1..max_types)",
        "flag": "--types", "metavar": "K|auto", "parse": "types"})
    max_types: int = field(default=4, metadata={
        "help": "with n_types auto: the largest K tried", "metavar": "N"})
    init: str = field(default="auto", metadata={
        "help": "how EM starts: auto, kmeans (k-means++ on PL score statistics), linear (the "
                "linear backend's posteriors start a "
                "LoRA run) or random", "choices": INITS})
    n_init: int = field(default=3, metadata={
        "help": "restarts; the best objective is kept", "metavar": "N"})
    max_iter: int = field(default=100, metadata={"help": "EM iterations at most",
                                                 "metavar": "N"})
    tol: float = field(default=1e-4, metadata={
        "help": "stop when the objective's relative change falls below this", "metavar": "T"})
    selection: str = field(default="cv", metadata={
        "help": "how n_types auto chooses K: held-out annotator likelihood over folds that "
                "hold out every annotator once (cv), over one split (heldout), or BIC",
        "choices": SELECTIONS})
    heldout_fraction: float = field(default=0.25, metadata={
        "help": "selection heldout: the share of annotators held out", "metavar": "F"})
    sparse_threshold: float = field(default=0.0, metadata={
        "help": "skip (annotation, type) pairs whose posterior weight is below this in the "
                "M-step", "metavar": "W"})
    warm_start: bool = field(default=True, metadata={
        "help": "each M-step starts from the previous iteration's policies"})
    force: bool = field(default=False, metadata={
        "help": "fit even when the data cannot identify types (DESIGN section 2)"})
    random_state: int = field(default=0, metadata={"help": "seed", "flag": "--seed",
                                                    "metavar": "S"})
    min_type_share: float = field(default=0.05, metadata={
        "help": "a type with a smaller prior is pruned", "metavar": "P"})
    min_type_annotators: float = field(default=3.0, metadata={
        "help": "a type resting on fewer effective annotators is pruned", "metavar": "N"})
    merge_nats: float = field(default=1.0, metadata={
        "help": "two types whose merge costs fewer nats per annotator are merged",
        "metavar": "NATS"})
    se_factor: float = field(default=1.645, metadata={
        "help": "n_types auto: a larger K must beat the smaller by this many standard errors",
        "metavar": "Z"})
    max_time: float | None = field(default=None, metadata={
        "help": "stop EM after this many seconds (the best fit so far is kept)",
        "metavar": "SECONDS"})
    checkpoint_interval: float = field(default=10.0, metadata={
        "help": "an EM run writes its checkpoint once this many seconds of its work are "
                "unsaved (a kill loses at most that much; a shorter run is re-run instead); 0: "
                "after every iteration", "metavar": "SECONDS"})
