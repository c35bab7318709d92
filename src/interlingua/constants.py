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

# Checkpoint files (save_pretrained / from_pretrained layout).
CHECKPOINT_CONFIG_FILE = "interlingua_config.json"
CHECKPOINT_WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
OPTIMIZER_STATE_FILE = "optimizer.safetensors"

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
