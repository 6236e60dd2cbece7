"""Models: the registry, backbones and one module per method. Importing registers every model."""
from hsbs_lib.models import baseline, clcl, hsbs, mfer, phanet  # noqa: F401  (registration)
from hsbs_lib.models.base import FERModel, ModelOutput
from hsbs_lib.models.registry import create_model, list_models, model_option_defaults, register_model

__all__ = ["FERModel", "ModelOutput", "create_model", "list_models", "model_option_defaults", "register_model"]
