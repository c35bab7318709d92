"""Tiny random-initialised models built in code, so unit tests need no downloads and run in seconds.

* ``tiny-llama``: ``LlamaForCausalLM`` (2 layers, width 64) with a byte-level tokenizer that adds BOS.
* ``tiny-qwen2``: ``Qwen2ForCausalLM`` (2 layers, width 48, tied embeddings) with a small BPE
  tokenizer trained on a fixed corpus, no BOS, and a ChatML chat template — a different family,
  tokenizer and width, like the real pairs.
* ``tiny-gemma``: ``Gemma3ForCausalLM`` (2 layers, width 40, scaled embeddings) with a SentencePiece-style
  BPE tokenizer (``▁`` for spaces, ``<0xNN>`` byte fallback) that adds BOS: the third family of the
  native design's N = 3 tests.
* ``tiny-encoder``: a 2-layer BERT sentence-transformer (mean pooling + normalise, width 32).

Everything is seeded, so a build is the same on every machine. The registry builds each once into
the cache (``interlingua.models.registry``); ``build_tiny_model`` writes a folder that
``from_pretrained`` / ``SentenceTransformer`` load.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

TINY_MODELS = ("tiny-llama", "tiny-qwen2", "tiny-gemma", "tiny-encoder")
TINY_BUILD_VERSION = 1  # bump when a build changes, so caches are rebuilt

_CORPUS = """\
Context: The river flows through the old city and reaches the sea near the harbour.
Question: Where does the river reach the sea?
Answer: near the harbour
Context: In 1905 the scientist published four papers that changed physics.
Question: How many papers were published in 1905?
Answer: four
The committee met in the capital on Tuesday to discuss the new railway line.
Students of the university study mathematics, history, music and medicine.
The museum opened its doors to the public in the spring of the following year.
Which team won the championship, and who scored the final goal of the season?
What is the name of the mountain that stands to the north of the valley?
When was the bridge built, and how long did the work take to finish?
""" * 4

_CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(name: str, out_dir: Path) -> None:
    """Build tiny model ``name`` into ``out_dir`` (created)."""
    builders = {"tiny-llama": _build_tiny_llama, "tiny-qwen2": _build_tiny_qwen2, "tiny-gemma": _build_tiny_gemma,
                "tiny-encoder": _build_tiny_encoder}
    if name not in builders:
        raise KeyError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builders[name](out_dir)


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte symbols and no merges: every text is representable, one token per byte."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", add_bos_token=True
    )


def _trained_bpe_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = _CHATML_TEMPLATE
    return fast


def _sentencepiece_style_tokenizer() -> PreTrainedTokenizerFast:
    """BPE over ``▁``-marked words with ``<0xNN>`` byte-fallback tokens, as Gemma and Llama-2 write them."""
    import json

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, show_progress=False,
                                  initial_alphabet=list(string.ascii_letters + string.digits + ".,?'\u2581"))
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    description = json.loads(tok.to_str())
    vocab = description["model"]["vocab"]
    for byte in range(256):  # byte-fallback tokens after the trained ones
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    description["model"].update(byte_fallback=True, fuse_unk=True)
    description["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Fuse"}]}
    tok = Tokenizer.from_str(json.dumps(description))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", add_bos_token=True)


def _wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {t: i for i, t in enumerate(specials + chars + ["##" + c for c in chars])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
    )


def _save_causal_lm(model, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build_tiny_llama(out_dir: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _byte_level_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    _save_causal_lm(LlamaForCausalLM(config), tokenizer, out_dir)


def _build_tiny_qwen2(out_dir: Path) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = _trained_bpe_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(1)
    _save_causal_lm(Qwen2ForCausalLM(config), tokenizer, out_dir)


def _build_tiny_gemma(out_dir: Path) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = _sentencepiece_style_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=40, intermediate_size=80, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=20, max_position_embeddings=2048, sliding_window=64,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(3)
    _save_causal_lm(Gemma3ForCausalLM(config), tokenizer, out_dir)


def _build_tiny_encoder(out_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models
    from transformers import BertConfig, BertModel

    tokenizer = _wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(2)
    hf_dir = out_dir / "_hf"
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = st_models.Transformer(str(hf_dir), max_seq_length=256)
    pooling = st_models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, st_models.Normalize()], device="cpu").save(str(out_dir))
