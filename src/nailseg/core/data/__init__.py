"""The framework-free data layer every stack shares.

It finds image/mask pairs, decodes and validates them (catching bad input once, with an
error naming the file), turns masks into binary arrays by one stated rule, makes the
seeded split that every stack reuses, and draws the synthetic nails set.
"""

from nailseg.core.data.decode import MASK_RULE, read_image, read_mask
from nailseg.core.data.discover import Pair, find_pairs, resolve_data_root

__all__ = ["MASK_RULE", "Pair", "find_pairs", "read_image", "read_mask", "resolve_data_root"]
