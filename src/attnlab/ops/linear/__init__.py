"""Linear attention (Katharopoulos et al. 2020) and Performer FAVOR+ (Choromanski et al. 2020)."""
from .attention import MODES, linear_attention, linear_attention_features
from .feature_maps import FEATURE_MAPS, resolve_feature_map
from .forms import LinearState
from .performer import (
    draw_random_features,
    favor_features,
    favor_kernel_estimate,
    performer_attention,
)
from .reference import linear_attention_reference

__all__ = [
    "FEATURE_MAPS",
    "MODES",
    "LinearState",
    "draw_random_features",
    "favor_features",
    "favor_kernel_estimate",
    "linear_attention",
    "linear_attention_features",
    "linear_attention_reference",
    "performer_attention",
    "resolve_feature_map",
]
