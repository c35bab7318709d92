"""The errors that mean "bad input from the user": the CLI prints them as one clear line, no traceback."""

from interlingua.config import ConfigError
from interlingua.data.squad import SquadDataError
from interlingua.eval.compare import CompareError
from interlingua.eval.reuse import BaselineReuseError
from interlingua.models.interlingua import CheckpointError
from interlingua.models.registry import ModelSpecError
from interlingua.training.recipe import TrainingDivergedError
from interlingua.wire.errors import WireFormatError
from interlingua.wire.service import MessageInputError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, ModelSpecError, SquadDataError, CheckpointError, BaselineReuseError, TrainingDivergedError,
    WireFormatError, MessageInputError, FileNotFoundError, CompareError,
)
