"""Hugging Face sequence classifiers built from a config (no weights are downloaded).

Each builder returns the ``transformers`` model exactly as built: its first layer is an
embedding, so rayeffi feeds it int64 token ids (``models/contract.py``), and its
``SequenceClassifierOutput`` is unwrapped to ``logits`` by ``task.logits_of``. Recipes
name them by path, e.g. ``model: {name: "rayeffi.models.hf:bert_classifier",
kwargs: {vocab_size: 17}}``; the built-in digits are 64 pixel values in 0..16, read
as 64 tokens of a 17-word vocabulary. Needs ``pip install transformers``.
"""

from __future__ import annotations

from rayeffi.errors import UserError


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("the Hugging Face models need the transformers package: pip install 'transformers<5'") from None
    return transformers


def bert_classifier(num_features: int, num_classes: int, image_shape=None, vocab_size: int = 17,
                    hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, intermediate_size: int = 64,
                    dropout: float = 0.0):
    """``BertForSequenceClassification`` (Devlin et al. 2019) over rows of ``num_features`` token ids.

    The padding id is one more than the vocabulary: BERT's default 0 would freeze token 0's
    embedding at zero (its ``padding_idx``), and the digits' background pixel is 0.
    """
    transformers = _transformers()
    config = transformers.BertConfig(
        vocab_size=vocab_size + 1, pad_token_id=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=num_features, num_labels=num_classes,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    return transformers.BertForSequenceClassification(config)


def gpt2_classifier(num_features: int, num_classes: int, image_shape=None, vocab_size: int = 17,
                    hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, dropout: float = 0.0):
    """``GPT2ForSequenceClassification`` (Radford et al. 2019): the last token's state is classified.

    Its padding id is one more than the vocabulary (no row holds it), so every row's last
    token is read, as GPT-2 does for unpadded batches.
    """
    transformers = _transformers()
    config = transformers.GPT2Config(
        vocab_size=vocab_size + 1, n_positions=num_features, n_embd=hidden_size, n_layer=num_layers,
        n_head=num_heads, num_labels=num_classes, pad_token_id=vocab_size,
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    return transformers.GPT2ForSequenceClassification(config)


def gpt2_lm(num_features: int, num_classes: int, image_shape=None, vocab_size: int | None = None,
            hidden_size: int = 32, num_layers: int = 2, num_heads: int = 2, dropout: float = 0.0):
    """``GPT2LMHeadModel`` for ``task: language_modeling``: ``[N, T]`` ids -> ``[N, T, vocab]`` logits.

    ``num_features`` is ``seq_len`` (its positions) and ``num_classes`` the vocabulary. Its
    ``lm_head`` is tied to the token embedding, as GPT-2 ties them: DSD leaves the pair dense
    (``techniques/dsd/layers.py``) rather than prune the embedding through the head.
    """
    transformers = _transformers()
    config = transformers.GPT2Config(
        vocab_size=vocab_size or num_classes, n_positions=num_features, n_embd=hidden_size, n_layer=num_layers,
        n_head=num_heads, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
    )
    return transformers.GPT2LMHeadModel(config)
