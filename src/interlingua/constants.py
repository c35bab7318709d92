"""Artifact file names, environment variables and other fixed names, in one place."""

# Environment variables users can set.
ENV_CACHE_DIR = "INTERLINGUA_CACHE"  # where converted GGUF models and built tiny models live
ENV_SQUAD_DIR = "INTERLINGUA_SQUAD_DIR"  # folder holding SQuAD v1.1 JSON files

DEFAULT_CACHE_SUBDIR = "interlingua"  # under ~/.cache

# Files every run writes next to its checkpoint / results.
RESOLVED_CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
METRICS_LOG_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "predictions.jsonl"
REPORT_FILE = "report.md"
CROSS_DECODE_PLOT = "cross_decode.png"
F1_BY_ROW_PLOT = "f1_by_row.png"
EVAL_SUBDIR = "eval"  # eval results of <run>/step_N go to <run>/eval/step_N (never inside a checkpoint)

# Checkpoint files (save_pretrained / from_pretrained layout).
CHECKPOINT_CONFIG_FILE = "interlingua_config.json"
CHECKPOINT_WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
TRAINER_STATE_VERSION = 1
"""Format version of ``trainer_state.json``."""
OPTIMIZER_STATE_FILE = "optimizer.safetensors"
RUN_INFO_FILE = "run_info.json"  # command, git hash, versions, machine of a training run
LATEST_CHECKPOINT_FILE = "latest"  # text: the folder name of the newest complete checkpoint
CHECKPOINT_DIR_FORMAT = "step_{step:06d}"  # checkpoint folders inside a training run

# SQuAD v1.1.
SQUAD_HUB_ID = "rajpurkar/squad"
SQUAD_FILES = {
    "train": ("train-v1.1.json", "train-v1.1.reconstructed.json"),
    "validation": ("dev-v1.1.json",),
}

# Text prompt format (DESIGN §5).
TEXT_PROMPT_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer:"
QUESTION_ONLY_TEMPLATE = "Question: {question}\nAnswer:"
ANSWER_CUE = "\nAnswer:"
CHAT_SYSTEM_INSTRUCTION = (
    "Answer the question with a short phrase copied from the context. Do not explain."
)
TRAINING_CURVES_PLOT = "training_curves.png"
# Reconstruction stage (pretrain.*): what follows the soft prompt when the frozen LLM must repeat the
# text. An instruction the instruct models can read, distinct from ANSWER_CUE, so the cue (not the
# soft prompt) says which task is asked and one soft prompt serves both; it starts with "\n" like
# ANSWER_CUE and ends with one, so the first target ("Context") begins a line as it does in the text.
RECONSTRUCTION_CUE = "\nRepeat the text above:\n"
