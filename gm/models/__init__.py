"""One module per model family, named as in the book (Goodfellow et al. 2016, ch. 20).

Every module here is imported by :mod:`gm.registry`; its ``@register`` decorators add
its models.
"""
