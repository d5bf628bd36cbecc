"""Model-function interfaces, analytic ground-truth models and networks."""

from itscale.models import digits
from itscale.models.bound import Bound, bind
from itscale.models.digits import Classifier
from itscale.models.gaussian_mixture import GaussianMixture
from itscale.models.markov import MarkovLM, NGramLM
from itscale.models.masked_transformer import MaskedTransformer, masked_denoising_loss
from itscale.models.mlp import MLP, as_fn
from itscale.models.scale_tree import ScaleTree
from itscale.models.smoothed_sequence import SmoothedSSM
from itscale.models.state_space import Filtered, LinearGaussianSSM, kalman_filter, rts_smoother
from itscale.models.penzai_adapter import from_penzai  # imports penzai only when called
from itscale.models.training import train
from itscale.models.transformer import KVCache, Transformer, next_token_loss, split_forward
