"""Preference data: sources, row formats, quality filters, tokenization, packing and the Ray Data graph.

The pure modules (``formats``, ``tokenize``, ``packer``) must not import Ray or DeepSpeed.
"""
