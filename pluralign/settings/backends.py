"""Backend settings (DESIGN §5): the `linear:` and `lora:` YAML sections as typed dataclasses.

Kept apart from the backends, and free of torch, so that a config is checked in a fraction of a
second, before any heavy import or model load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pluralign.settings.stages import FEATURES  # noqa: F401 (defined with the other choices)

#: Names of the losses in `losses.LOSSES` (a test keeps the two in step).
LOSS_NAMES = ("pl_dpo", "ipo", "distill", "pmle", "rkl")
LOSS_HELP = ("loss name (losses.LOSSES): pl_dpo, ipo, distill (to a teacher reward), pmle "
             "(preference MLE) or rkl (reverse KL to a teacher reward); README 'Objectives'")
BETA_HELP = ("pl_dpo, ipo, distill: reward = beta * s; pmle, rkl: the weight of "
             "KL(pi || pi_0)")
GAMMA_HELP = ("pmle: the preference temperature (P(a > b) = sigmoid(gamma log pi(a)/pi(b))); "
              "rkl: the weight of the entropy bonus; unused by the other losses")


def _check_loss(name: str, beta: float, gamma: float) -> None:
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss '{name}'; known: {', '.join(LOSS_NAMES)}")
    if not beta > 0 or not gamma > 0:
        raise ValueError(f"beta and gamma must be > 0, got beta={beta}, gamma={gamma}")


@dataclass
class LinearConfig:
    """Settings of the linear backend."""

    types: int = field(default=2, metadata={"help": "number of type policies K"})
    beta: float = field(default=1.0, metadata={"help": BETA_HELP})
    gamma: float = field(default=1.0, metadata={"help": GAMMA_HELP})
    features: str = field(default="given", metadata={"help": "given, onehot or embedding"})
    l2: float = field(default=1.0, metadata={
        "help": "L2 penalty lambda: type k minimises sum_a w_a loss_a + lambda/2 |theta_k|^2 "
                "(a fixed Gaussian prior, so EM is monotone in loglik - penalty)"})
    loss: str = field(default="pl_dpo", metadata={"help": LOSS_HELP})
    tol: float = field(default=1e-8, metadata={"help": "L-BFGS gradient tolerance"})
    max_iter: int = field(default=2000, metadata={"help": "L-BFGS iteration limit"})
    skip_mass: float = field(default=1e-4, metadata={
        "help": "a type's fit skips its lightest rows whose weights sum to at most this share "
                "of its total: its gradient then errs by at most skip_mass times one row's "
                "largest gradient (0: every row of positive weight)"})
    model: str = field(default="builtin:smollm2-135m", metadata={
        "help": "embedding features: the LM whose hidden states are the features"})
    max_prompt_tokens: int = field(default=256, metadata={"help": "embedding: prompt tokens"})
    max_response_tokens: int = field(default=128, metadata={"help": "embedding: response "
                                                                    "tokens"})
    token_budget: int = field(default=8192, metadata={"help": "embedding: tokens per batch"})
    length_feature: bool = field(default=True, metadata={
        "help": "embedding: add log(response tokens before truncation) as a unit-scale feature"})
    cache: str | None = field(default=None, metadata={"help": "reference cache folder"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")
        if self.types < 1 or self.beta <= 0 or self.l2 < 0:
            raise ValueError("types >= 1, beta > 0 and l2 >= 0 are required")
        if not 0 <= self.skip_mass < 1:
            raise ValueError(f"skip_mass must be in [0, 1), got {self.skip_mass}")
        _check_loss(self.loss, self.beta, self.gamma)


DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SHARDINGS = ("auto", "none", "fsdp")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class LoRAConfig:
    """Settings of the LoRA backend."""

    model: str = field(default="builtin:tiny", metadata={"help": "model spec (models.py)"})
    types: int = field(default=2, metadata={"help": "number of type policies K"})
    beta: float = field(default=0.1, metadata={"help": BETA_HELP})
    gamma: float = field(default=1.0, metadata={"help": GAMMA_HELP})
    loss: str = field(default="pl_dpo", metadata={"help": LOSS_HELP})
    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS, metadata={
        "help": "module names that get adapters", "nargs": "+", "metavar": "NAME"})
    top_layers: int | None = field(default=None, metadata={
        "help": "adapters in the top T layers only (None: all layers); enables trunk caching"})
    trunk_cache: bool = field(default=True, metadata={
        "help": "with top_layers, start every pass from cached states (same results, less work)"})
    trunk_dtype: str = field(default="float32", metadata={
        "help": "dtype of cached trunk states (bfloat16 halves their memory)"})
    max_prompt_tokens: int = field(default=256, metadata={"help": "prompt tokens kept (end)"})
    max_response_tokens: int = field(default=128, metadata={"help": "response tokens kept"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    epochs: int = field(default=1, metadata={"help": "passes over the data per fit"})
    batch_size: int = field(default=8, metadata={"help": "annotations per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps warming up"})
    scheduler: str = field(default="linear", metadata={"help": "learning-rate schedule"})
    token_budget: int = field(default=8192, metadata={
        "help": "padded tokens per scoring batch"})
    cache: str | None = field(default=None, metadata={
        "help": "reference cache folder; None: $PLURALIGN_CACHE/reference; '': no cache"})
    seed: int = field(default=0, metadata={"help": "seed of shuffling"})
    device: str = field(default="auto", metadata={
        "help": "auto (cuda when present, else cpu), cpu, cuda or cuda:N"})
    dtype: str = field(default="auto", metadata={
        "help": "weights' dtype: auto (bfloat16 on a GPU that supports it, float16 on one "
                "that does not, float32 on cpu), float32, bfloat16 or float16; adapters train "
                "in float32 whatever it is"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute activations in the backward pass (less memory, about a third more "
                "time): for large models"})
    sharding: str = field(default="auto", metadata={
        "help": "with several processes: fsdp splits every decoder layer's weights over the "
                "ranks (FSDP), for a model one device cannot hold; none keeps the whole model "
                "on every rank; auto: fsdp when accelerate launched the run with FSDP "
                "(pipelines/accelerate/fsdp.yaml), else none. The same results either way"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    trust_remote_code: bool = field(default=False, metadata={"help": "for hub models only"})

    def __post_init__(self) -> None:
        positive = ("types", "rank", "epochs", "batch_size", "grad_accum", "max_prompt_tokens",
                    "max_response_tokens", "token_budget")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta <= 0 or self.learning_rate <= 0:
            raise ValueError("beta and learning_rate must be > 0")
        if self.top_layers is not None and self.top_layers < 1:
            raise ValueError(f"top_layers must be >= 1 or None, got {self.top_layers}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check_loss(self.loss, self.beta, self.gamma)
        self.target_modules = tuple(self.target_modules)
        if self.sharding not in SHARDINGS:
            raise ValueError(f"sharding must be one of {SHARDINGS}, got {self.sharding!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or (
                self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


#: Each backend's settings class, by the name em.json and the `backend:` key use.
BACKEND_CONFIGS: dict[str, type] = {"linear": LinearConfig, "lora": LoRAConfig}
