"""The ``text_topics`` example: short sentences about four topics, tokenised by ``words.tokenise``
(``data.transform``) and classified by ``model.build``. See ``examples/text_topics.yaml``."""
