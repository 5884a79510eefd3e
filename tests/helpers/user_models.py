"""A user model reached by ``model.name: helpers.user_models:tiny``."""

from torch import nn


def tiny(num_features, num_classes, image_shape=None, width=16):
    return nn.Sequential(nn.Flatten(), nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, num_classes))


def not_a_model(num_features, num_classes, image_shape=None):
    return "a string"


class _Slow(nn.Module):
    """Sleeps in every training forward: epochs last long enough to be interrupted on cue."""

    def __init__(self, inner: nn.Module, sleep_s: float):
        super().__init__()
        self.inner, self.sleep_s = inner, sleep_s

    def forward(self, x):
        if self.training:
            import time

            time.sleep(self.sleep_s)
        return self.inner(x)


def slow(num_features, num_classes, image_shape=None, width=16, sleep_s=0.1):
    return _Slow(tiny(num_features, num_classes, width=width), sleep_s)


class _Crashing(_Slow):
    """Raises after ``crash_after`` training batches: a trial that crashes mid-training."""

    def __init__(self, inner: nn.Module, sleep_s: float, crash_after: int):
        super().__init__(inner, sleep_s)
        self.crash_after, self.batches = crash_after, 0

    def forward(self, x):
        if self.training:
            self.batches += 1
            if self.batches > self.crash_after:
                raise RuntimeError("injected crash")
        return super().forward(x)


def crashing(num_features, num_classes, image_shape=None, width=16, crash_after=10, sleep_s=0.0):
    return _Crashing(tiny(num_features, num_classes, width=width), sleep_s, crash_after)


class _LateEmbedding(nn.Module):
    """Token ids through an embedding that is not its first layer: ``auto`` cannot tell."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.norm = nn.LayerNorm(8)  # registered first, used after the embedding
        self.embed = nn.Embedding(17, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, ids):
        return self.head(self.norm(self.embed(ids)).mean(dim=1))


def late_embedding(num_features, num_classes, image_shape=None):
    return _LateEmbedding(num_features, num_classes)


def wrong_width(num_features, num_classes, image_shape=None):
    return nn.Sequential(nn.Linear(num_features, num_classes + 1))


class _Blowup(nn.Module):
    def __init__(self, num_features, num_classes):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x):
        return self.linear(x) * float("inf")


def blowup(num_features, num_classes, image_shape=None):
    return _Blowup(num_features, num_classes)


class _DictOutput(nn.Module):
    """Returns ``{"logits": ...}``, as a Hugging Face model's ModelOutput does."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x):
        return {"logits": self.linear(x), "hidden": x}


def dict_output(num_features, num_classes, image_shape=None):
    return _DictOutput(num_features, num_classes)


class Tagger(nn.Module):
    """A label per token: embedding, a GRU over the sequence, a linear layer per position."""

    def __init__(self, vocab_size: int, num_classes: int, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.out = nn.Linear(width, num_classes)

    def forward(self, ids):
        return self.out(self.rnn(self.embed(ids))[0])


def tagger(num_features, num_classes, image_shape=None, vocab_size=None):
    return Tagger(vocab_size, num_classes)
