"""Models: the adapted torchvision zoo, user entrypoints and checkpoints, the teacher."""

from .loader import ModelInfo, check_model, import_callable, load_checkpoint, register_instance, resolve_model
from .teacher import Teacher, cache_dir_default, evaluate, get_teacher
from .zoo import MODELS, build_model, family_of

__all__ = [
    "MODELS", "ModelInfo", "Teacher", "build_model", "cache_dir_default", "check_model", "evaluate",
    "family_of", "get_teacher", "import_callable", "load_checkpoint", "register_instance", "resolve_model",
]
