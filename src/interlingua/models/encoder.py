"""A frozen sentence encoder: sentence embeddings and token states for the semantic anchor."""

from __future__ import annotations

import torch
from sentence_transformers import SentenceTransformer

from interlingua.models.registry import resolve_model_path


class SentenceEncoder:
    """A frozen ``SentenceTransformer`` (eval mode, no gradients).

    The model's own modules decide pooling and normalisation (all-MiniLM-L6-v2 ends in
    ``Normalize``, so its sentence embeddings have unit norm); nothing is added here.

    Args:
        spec: Any spec :func:`interlingua.models.registry.resolve_model_path` accepts.
        device: Device to run on.
        batch_size: Texts per forward pass.
    """

    def __init__(self, spec: str, device: str | torch.device = "cpu", batch_size: int = 64) -> None:
        self.model = SentenceTransformer(resolve_model_path(spec), device=str(device))
        self.model.eval()
        self.model.requires_grad_(False)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        """The device the encoder runs on; outputs live here."""
        return self.model.device

    @property
    def dim(self) -> int:
        """Width ``d_sem`` of the sentence embeddings."""
        # ``get_embedding_dimension`` since sentence-transformers 6, the longer name before.
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return dimension()

    @property
    def token_dim(self) -> int:
        """Width of the token states from :meth:`encode_tokens` (the transformer's hidden size)."""
        return self.model[0].auto_model.config.hidden_size

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed sentences.

        Args:
            texts: ``B`` strings.

        Returns:
            ``(B, d_sem)`` float32 embeddings on :attr:`device`.
        """
        batches = [features["sentence_embedding"] for features in self._forward_batches(texts)]
        return torch.cat(batches).float()  # (B, d_sem)

    def encode_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the transformer's token states, padded to the longest text.

        Args:
            texts: ``B`` strings.

        Returns:
            ``(states, mask)``: ``(B, T, d_tok)`` float32 token states on :attr:`device` (zero at
            padding) and a ``(B, T)`` bool mask, True at real tokens.
        """
        outputs = list(self._forward_batches(texts))
        longest = max(features["token_embeddings"].shape[1] for features in outputs)
        states, masks = [], []
        for features in outputs:
            pad = longest - features["token_embeddings"].shape[1]
            mask = features["attention_mask"].bool()  # (b, t)
            tokens = features["token_embeddings"].float() * mask.unsqueeze(-1)  # (b, t, d_tok)
            states.append(torch.nn.functional.pad(tokens, (0, 0, 0, pad)))  # (b, T, d_tok)
            masks.append(torch.nn.functional.pad(mask, (0, pad), value=False))  # (b, T)
        return torch.cat(states), torch.cat(masks)

    @torch.no_grad()
    def _forward_batches(self, texts: list[str]):
        """Yield the model's output features for each batch of ``texts``, in order.

        ``no_grad`` rather than ``SentenceTransformer.encode``'s inference mode: inference tensors
        cannot be used later in an autograd graph (as anchor targets are).
        """
        if not texts:
            raise ValueError("SentenceEncoder got an empty list of texts; pass at least one string.")
        for start in range(0, len(texts), self.batch_size):
            features = _preprocess(self.model, texts[start : start + self.batch_size])
            features = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in features.items()}
            yield self.model(features)


def _preprocess(model: SentenceTransformer, texts: list[str]) -> dict:
    """Tokenise ``texts`` (``preprocess`` since sentence-transformers 6, ``tokenize`` before)."""
    preprocess = getattr(model, "preprocess", None) or model.tokenize
    return preprocess(texts)
