"""Converters of the public datasets AdaMI was evaluated on into nnU-Net raw datasets (source + target pairs)."""
