"""Explanations: where a policy looks, how often a student agrees with its teacher, and a
student a person can read.

One module per concern, each importable alone (none imports this package's `__init__`):

- `saliency_maps`: gradient and perturbation saliency maps (Greydanus et al. 2018: MinAtar object
  removal, Atari Gaussian blur) and how alike two maps are (Spearman, Pearson, top-k overlap);
- `agreement`: the teacher's Q-gap, kinds of state, the confusion matrix and `agreement_report`;
- `linear`: the linear student over MinAtar's object channels (`fit_linear`) and its numbers;
- `report`: the states to explain (`collect_states`), `explain_policies` over a teacher and its
  students, and `write_explanation` (figures and explain.json).

Data flow: `collect_states` -> `explain_policies` (saliency + agreement per policy) ->
`write_explanation`, with `fit_linear` -> `linear_scores` -> `linear_report` joining it.

Every public name is re-exported here, so `from distill import explain; explain.X` works for all
of them (`explain.saliency` is the function, as before the split; its module is
`saliency_maps`).
"""

from distill.explain.agreement import (
    GAP_KINDS,
    agreement_report,
    confusion_matrix,
    distinct_states,
    gap_kinds,
    q_gap,
)
from distill.explain.linear import (
    LinearConfig,
    LinearStudent,
    fit_linear,
    init_linear,
    linear_loss,
    linear_q,
    linear_report,
    linear_scores,
    make_linear_fit,
    preference_weights,
    split_envs,
)
from distill.explain.report import (
    check_explainable,
    collect_states,
    explain_command,
    explain_policies,
    numbers,
    policy_label,
    untrained_policy,
    write_explanation,
)
from distill.explain.saliency_maps import (
    BLUR_SIGMA,
    MASK_SIGMA,
    SALIENCY_METHODS,
    STRIDE,
    ApplyFn,
    advantages,
    atari_perturbation_saliency,
    average_ranks,
    display_map,
    explain_states,
    gaussian_blur,
    gaussian_kernel1d,
    gaussian_masks,
    gradient_saliency,
    map_similarity,
    minatar_perturbation_saliency,
    pearson,
    perturbation_scores,
    policy_saliency,
    q_and_saliency,
    saliency,
    spearman,
    top_k_overlap,
)

__all__ = [
    "BLUR_SIGMA",
    "GAP_KINDS",
    "MASK_SIGMA",
    "SALIENCY_METHODS",
    "STRIDE",
    "ApplyFn",
    "LinearConfig",
    "LinearStudent",
    "advantages",
    "agreement_report",
    "atari_perturbation_saliency",
    "average_ranks",
    "check_explainable",
    "collect_states",
    "confusion_matrix",
    "display_map",
    "distinct_states",
    "explain_command",
    "explain_policies",
    "explain_states",
    "fit_linear",
    "gap_kinds",
    "gaussian_blur",
    "gaussian_kernel1d",
    "gaussian_masks",
    "gradient_saliency",
    "init_linear",
    "linear_loss",
    "linear_q",
    "linear_report",
    "linear_scores",
    "make_linear_fit",
    "map_similarity",
    "minatar_perturbation_saliency",
    "numbers",
    "pearson",
    "perturbation_scores",
    "policy_label",
    "policy_saliency",
    "preference_weights",
    "q_and_saliency",
    "q_gap",
    "saliency",
    "spearman",
    "split_envs",
    "top_k_overlap",
    "untrained_policy",
    "write_explanation",
]
